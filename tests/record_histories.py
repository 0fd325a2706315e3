"""Record OrderWorkflow histories, one per path of the workflow, for the replay tests of later releases.

    python -m tests.record_histories --out tests/histories/release-0.2      # every scenario
    python -m tests.record_histories --out DIR --only sim-market-fill ...    # some of them
    python -m tests.record_histories --list

Each release records its own set with the code it ships (tests/histories/release-X/); the replay test
(tests/test_replay.py) replays every set against the current code, so a change that would break an
order started by an earlier release fails CI. The recorder starts its own services as the tests do: a
Temporal dev server (continue-as-new suggested at 200 events), the time-skipping test server, Redis,
and Binance and Bybit exchange-emulator processes that the real ccxt client talks to over HTTP.

A scenario drives one order down one path and asserts that it took that path (its states, its
reason) before its history is written, so a file's name says what it holds. A continued-as-new
order is written one file per run (`<workflow id>@run<N>.json`). A scenario that depends on the
timing of the venue's price path gets a second attempt. A scenario that fails is reported, nothing
is written for it in --out (its orders go to `<out>.failed/` for diagnosis: do not commit them), and
the exit status is 1; rerun it with --only.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal as signals
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.venues.gate import GateLimits, VenueGate
from activities.venues.simulated import FAULTS_KEY, SimulatedVenue
from config.settings import Settings, load_settings
from oms import venue_model
from oms.markets import simulated_market
from oms.models import OrderSnapshot, OrderState, Signal, client_order_id_for
from oms.venue import VenueFill, VenueOrderRef, VenueOrderReport
from tests.conftest import (REPO, SEARCH_ATTRIBUTES, dev_server_args, direct_settings, free_port, redis_server_binary,
                            tom_process)
from tests.emulators import Emulator, running_emulators
from tests.helpers import until_placed_and_hanging
from tests.test_direct_execution import SIM, future_crossing, resting_price
from tests.test_workflow_lifecycle import touch
from workers.poller import AccountPoller
from workers.runtime import find_binary
from workers.worker import build_registry, build_worker

S = OrderState
ScenarioFn = Callable[["Stage"], Awaitable[None]]
SCENARIOS: dict[str, ScenarioFn] = {}
ATTEMPTS: dict[str, int] = {}  # scenarios that depend on the price path's timing


def scenario(name: str, attempts: int = 1) -> Callable[[ScenarioFn], ScenarioFn]:
    def register(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = fn
        ATTEMPTS[name] = attempts
        return fn
    return register


def states(snap: OrderSnapshot) -> list[OrderState]:
    return [t.state for t in snap.transitions]


def expect(condition: bool, snap: OrderSnapshot | None = None, what: str = "") -> None:
    """The path the scenario is named after was taken; otherwise its history is not written."""
    if not condition:
        detail = f" {snap.state.value}: {[(t.state.value, t.reason) for t in snap.transitions]}" if snap else ""
        raise AssertionError(f"unexpected path {what}{detail}")


# --- services --------------------------------------------------------------------------------
@dataclass
class Services:
    dev: WorkflowEnvironment
    skipping: WorkflowEnvironment
    redis_url: str
    emulators: dict[str, Emulator]
    workdir: Path


@contextlib.asynccontextmanager
async def redis_server(workdir: Path) -> AsyncIterator[str]:
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
        for _ in range(200):
            try:
                await client.ping()
                break
            except (OSError, RedisError):
                await asyncio.sleep(0.05)
        await client.aclose()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[Services]:
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    workdir = Path(tempfile.mkdtemp(prefix="tom-record-"))
    try:
        async with redis_server(workdir) as redis_url:
            dev = await WorkflowEnvironment.start_local(
                dev_server_existing_path=find_binary("temporal"), dev_server_extra_args=dev_server_args(),
                data_converter=pydantic_data_converter, ui=False)
            skipping = await WorkflowEnvironment.start_time_skipping(
                test_server_existing_path=find_binary("temporal-test-server"), data_converter=pydantic_data_converter)
            keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            await skipping.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
                namespace="default", search_attributes={name: keyword for name in SEARCH_ATTRIBUTES}))
            try:
                with running_emulators(workdir) as emulators:
                    yield Services(dev, skipping, redis_url, emulators, workdir)
            finally:
                await skipping.shutdown()
                await dev.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def base_settings(svc: Services, task_queue: str) -> Settings:
    """config/local.yaml on the recorder's services, tuned like the tests' `fast_settings`."""
    host, port = svc.redis_url.removeprefix("redis://").split("/")[0].split(":")
    base = load_settings(REPO / "config" / "local.yaml", env={})
    sim = base.execution.simulation.model_dump(mode="json")
    return base.with_overrides(
        database={"type": "duckdb", "path": str(svc.workdir / f"{task_queue}.duckdb")},
        messaging={**base.messaging.model_dump(mode="json"), "host": host, "port": int(port)},
        temporal={**base.temporal.model_dump(mode="json"), "task_queue": task_queue},
        execution={**base.execution.model_dump(mode="json"), "simulation": {**sim, "delay_ms": 0}},
        orders={**base.orders.model_dump(mode="json"), "retry_delay_ms": 20, "execution_timeout_ms": 2000},
        account_limits={**base.account_limits.model_dump(mode="json"), "max_daily_orders": 10_000,
                        "max_order_value": 1_000_000},
    )


# --- one scenario's stage --------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    svc: Services
    redis: aioredis.Redis
    task_queue: str = field(default_factory=lambda: f"rec-{uuid.uuid4().hex[:10]}")
    client: Client | None = None
    kept: list[tuple[str, WorkflowHandle]] = field(default_factory=list)
    _orders: int = 0

    @property
    def settings(self) -> Settings:
        return base_settings(self.svc, self.task_queue)

    def signal(self, **fields) -> Signal:
        """A signal whose workflow id names the scenario (the history file is named after it)."""
        self._orders += 1
        suffix = "" if self._orders == 1 else f"-{self._orders}"
        data = {"signal_id": f"rec-{self.name}{suffix}-{uuid.uuid4().hex[:4]}", "strategy_id": "record",
                "symbol": "ETH/USDT", "side": "buy", "quantity": "0.1", **fields}
        return Signal.model_validate(data)

    async def start(self, keep: bool = True, **fields) -> WorkflowHandle:
        signal = self.signal(**fields)
        handle = await self.client.start_workflow("OrderWorkflow", signal, id=signal.workflow_id,
                                                  task_queue=self.task_queue, result_type=OrderSnapshot)
        if keep:
            self.kept.append((signal.workflow_id, handle))
        return handle

    async def run(self, **fields) -> OrderSnapshot:
        return await (await self.start(**fields)).result()

    @contextlib.asynccontextmanager
    async def worker(self, settings: Settings | None = None, skipping: bool = False, poller_s: float | None = 0.2,
                     poll_exchanges: tuple[str, ...] = ("simulation",)) -> AsyncIterator[None]:
        """A worker as production runs it: the workflow, its activities and (unless poller_s is None)
        the batched per-account fill poller of each exchange in `poll_exchanges`."""
        settings = settings or self.settings
        env = self.svc.skipping if skipping else self.svc.dev
        self.client = env.client
        registry = await build_registry(settings, self.redis)
        stop = asyncio.Event()
        pollers = []
        if poller_s is not None:
            pollers = [asyncio.create_task(AccountPoller(self.client, self.redis, registry, name,
                                                         getattr(registry.get(name), "account", "default"),
                                                         poller_s).run(stop)) for name in poll_exchanges]
        try:
            async with await build_worker(self.client, settings, self.redis, registry):
                yield
        finally:
            stop.set()
            await asyncio.gather(*pollers, return_exceptions=True)
            await registry.close()

    def direct(self, exchanges: tuple[str, ...] = ("binance",), direct: dict | None = None,
               orders: dict | None = None, **account) -> Settings:
        return direct_settings(self.settings, self.svc.emulators, exchanges, direct=direct, orders=orders, **account)

    def emulator(self, venue: str) -> Emulator:
        return self.svc.emulators[venue]


async def wait_for(handle: WorkflowHandle, wanted: set[OrderState] | Callable[[OrderSnapshot], bool],
                   timeout: float = 30) -> OrderSnapshot:
    test = wanted if callable(wanted) else (lambda snap: snap.state in wanted)
    deadline = time.monotonic() + timeout
    while True:
        snap = await handle.query("status", result_type=OrderSnapshot)
        if test(snap):
            return snap
        if time.monotonic() > deadline:
            path = [t.state.value for t in snap.transitions]
            raise AssertionError(f"{handle.id} stuck in {snap.state.value}: {path}")
        await asyncio.sleep(0.05)


async def update(handle: WorkflowHandle, name: str, arg: dict) -> OrderSnapshot:
    """execute_update, sent again while the server answers that the workflow is not ready for it
    (its workflow task is being retried); the update id makes the retry the same update."""
    update_id = str(uuid.uuid4())
    for attempt in range(20):
        try:
            return await handle.execute_update(name, arg, id=update_id, result_type=OrderSnapshot)
        except RPCError as error:
            if "already completed" in error.message:
                # An update lost with a failed workflow task (a signal arrived meanwhile) may still
                # have acted, as its local activities did: the order then ended without it.
                return await handle.result()
            if "unexpected workflow task failure" not in error.message or attempt == 19:
                raise
            await asyncio.sleep(0.25)
    raise AssertionError("unreachable")


async def refused_update(handle: WorkflowHandle, name: str, arg: dict) -> str:
    try:
        await update(handle, name, arg)
    except WorkflowUpdateFailedError as error:
        return str(error.cause)
    raise AssertionError(f"update {name} {arg} was not refused")


def price_touching(symbol: str = "ETH/USDT") -> str:
    """A buy limit just through the ask: about one book level fills at once."""
    return str((touch(symbol, "buy") * Decimal("1.00002")).quantize(Decimal("0.01")))


async def touch_moving_away(symbol: str = "ETH/USDT", hold_s: int = 25) -> tuple[str, str]:
    """(side, limit price) that takes about one book level now and that the venue's price path does
    not reach again for `hold_s` seconds: the rest of the order stays open, unfilled."""
    step = simulated_market(symbol).price_step
    for _ in range(90):
        now = datetime.now(timezone.utc)
        bid, ask = venue_model.top_of_book(symbol, now, SIM)
        later = [venue_model.top_of_book(symbol, now + timedelta(seconds=s), SIM) for s in range(1, hold_s)]
        buy = (ask * Decimal("1.00002") / step).to_integral_value(ROUND_FLOOR) * step
        if all(a > buy for _, a in later):
            return "buy", str(buy)
        sell = (bid * Decimal("0.99998") / step).to_integral_value(ROUND_CEILING) * step
        if all(b < sell for b, _ in later):
            return "sell", str(sell)
        await asyncio.sleep(1)
    raise AssertionError("the price path crosses back both ways for a minute and a half")


async def sleep_until(wall_time: float) -> None:
    await asyncio.sleep(max(0.0, wall_time - time.time()))


# --- simulation, dev server ------------------------------------------------------------------
@scenario("sim-market-fill")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await st.run(quantity="0.1")
    expect(states(snap) == [S.CREATED, S.VALIDATED, S.SUBMITTED, S.FILLED], snap)


@scenario("sim-market-collared-expired")
async def _(st: Stage) -> None:
    async with st.worker():
        reference = (touch("ETH/USDT", "buy") * Decimal("0.98")).quantize(Decimal("0.01"))
        snap = await st.run(quantity="0.1", reference_price=str(reference))
    expect(snap.state == S.EXPIRED and snap.filled_quantity == 0, snap)


@scenario("sim-limit-rests-then-fills-via-poller", attempts=2)
async def _(st: Stage) -> None:
    async with st.worker():
        side, price, fills_at = future_crossing("ETH/USDT")
        handle = await st.start(quantity="0.1", side=side, order_type="limit", limit_price=str(price))
        snap = await asyncio.wait_for(handle.result(), 40)
    expect(snap.state == S.FILLED and S.ACCEPTED in states(snap), snap)


@scenario("sim-partial-fills-over-time", attempts=2)
async def _(st: Stage) -> None:
    """A resting order larger than one level: the poller reports partial fills second by second."""
    async with st.worker():
        side, price, fills_at = future_crossing("ETH/USDT")
        handle = await st.start(quantity="300", side=side, order_type="limit", limit_price=str(price))
        await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED}, timeout=40)
        await asyncio.sleep(2.5)
        snap = await handle.query("status", result_type=OrderSnapshot)
        if snap.state != S.FILLED:
            snap = await update(handle, "cancel_order", {"reason": "enough"})
    expect(S.PARTIALLY_FILLED in states(snap) and snap.filled_quantity > 0, snap)


@scenario("sim-partial-at-once-then-cancel-update", attempts=2)
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await st.start(quantity="60", order_type="limit", limit_price=price_touching())
        first = await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED})
        expect(first.state == S.PARTIALLY_FILLED, first)
        reason = await refused_update(handle, "amend_order", {"quantity": str(first.filled_quantity)})
        expect("not above the filled quantity" in reason, first, reason)
        snap = await update(handle, "cancel_order", {"reason": "rest not wanted"})
    expect(snap.state == S.CANCELLED and snap.filled_quantity > 0, snap)


@scenario("sim-ioc-partial-expired", attempts=2)
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await st.run(quantity="60", order_type="limit", limit_price=price_touching(), time_in_force="IOC")
    expect(snap.state == S.EXPIRED and 0 < snap.filled_quantity < 60, snap)


@scenario("sim-fok-expired")
async def _(st: Stage) -> None:
    """700 ETH on ETH/BTC (10 levels of ~60 ETH) cannot fill at once; its value (~2 M USDT where
    orders are valued in the account currency) is let through."""
    limits = st.settings.account_limits.model_dump(mode="json")
    async with st.worker(st.settings.with_overrides(account_limits={**limits, "max_order_value": 10_000_000})):
        snap = await st.run(symbol="ETH/BTC", quantity="700", time_in_force="FOK", reference_price="0.05")
    expect(snap.state == S.EXPIRED and snap.filled_quantity == 0 and "FOK" in snap.reason, snap)


@scenario("sim-rejected-by-venue")
async def _(st: Stage) -> None:
    await st.redis.hset(FAULTS_KEY, "reject_next", 1)
    async with st.worker():
        snap = await st.run()
    expect(snap.state == S.REJECTED, snap)


DENIALS = {  # scenario suffix -> (signal fields, reason expected in the snapshot's reason)
    "unknown-symbol": ({"symbol": "NOPE/USDT"}, "unknown"),
    "unknown-exchange": ({"exchange": "nowhere"}, "unknown exchange"),
    "above-max-value": ({"quantity": "1000"}, "above_max_order_value"),
    "tick-size": ({"order_type": "limit", "limit_price": "1000.001"}, "tick_size"),
    "gtd-in-past": ({"order_type": "limit", "limit_price": "1000.00", "time_in_force": "GTD",
                     "expire_at": "2020-01-01T00:00:00+00:00"}, "gtd_in_past"),
    "lot-size": ({"quantity": "0.00001"}, ""),
}


def _denial(suffix: str, fields: dict, needle: str) -> None:
    @scenario(f"sim-denied-{suffix}")
    async def _(st: Stage) -> None:
        async with st.worker():
            snap = await st.run(**fields)
        expect(snap.state == S.DENIED and needle in (snap.reason or ""), snap)


for _suffix, (_fields, _needle) in DENIALS.items():
    _denial(_suffix, _fields, _needle)


@scenario("sim-denied-daily-limit")
async def _(st: Stage) -> None:
    limits = st.settings.account_limits.model_dump(mode="json")
    capped = st.settings.with_overrides(account_limits={**limits, "max_daily_orders": 1})
    async with st.worker(capped):
        first = await (await st.start(keep=False)).result()
        snap = await st.run()
    expect(first.state == S.FILLED and snap.state == S.DENIED and "daily_order_limit" in snap.reason, snap)


@scenario("sim-cancel-before-validation")
async def _(st: Stage) -> None:
    """Signal-with-start: the cancel is there before preparation has finished."""
    async with st.worker():
        signal = st.signal()
        handle = await st.client.start_workflow(
            "OrderWorkflow", signal, id=signal.workflow_id, task_queue=st.task_queue, result_type=OrderSnapshot,
            start_signal="cancel", start_signal_args=[{"reason": "changed my mind at once"}])
        st.kept.append((signal.workflow_id, handle))
        snap = await handle.result()
    expect(snap.state == S.CANCELLED and S.SUBMITTED not in states(snap), snap)


@scenario("sim-cancel-after-a-crash-during-placement")
async def _(st: Stage) -> None:
    """A `tom worker` is SIGKILLed after preparation placed the order, before its first task
    completed; a cancel arrives before the task runs again. It is seen first, but the order may be
    at the venue: looked up (unknown), found, and cancelled there."""
    orders, temporal = st.settings.orders.model_dump(mode="json"), st.settings.temporal.model_dump(mode="json")
    settings = st.settings.with_overrides(
        orders={**orders, "execution_timeout_ms": 60_000},
        temporal={**temporal, "address": st.svc.dev.client.service_client.config.target_host})
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "crash.yaml"
        config.write_text(settings.to_yaml())
        await st.redis.hset(FAULTS_KEY, "hang_next", 1)  # placed, then its answer never comes
        worker = tom_process(config, "worker", "--processes", "1", log_path=Path(tmp) / "worker.log")
        try:
            st.client = st.svc.dev.client
            handle = await st.start(order_type="limit", limit_price="1000.00")
            venue_key = f"sim:simulation:order:{client_order_id_for(handle.id)}"
            await until_placed_and_hanging(st.redis, worker, venue_key=venue_key)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signals.SIGKILL)
            worker.wait(10)
    await handle.signal("cancel", {"reason": "cancelled while its worker was down"})
    async with st.worker(settings):
        snap = await asyncio.wait_for(handle.result(), 90)
    expect(snap.state == S.CANCELLED and S.UNKNOWN in states(snap) and snap.venue_order_id is not None, snap)


@scenario("sim-start-at-waits-then-fills")
async def _(st: Stage) -> None:
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        snap = await st.run(execution={"start_at": start_at.isoformat()})
    submitted = next(t for t in snap.transitions if t.state == S.SUBMITTED)
    expect(snap.state == S.FILLED and submitted.at >= start_at, snap)


@scenario("sim-start-at-limit-amended-before-placement")
async def _(st: Stage) -> None:
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        handle = await st.start(order_type="limit", limit_price="1000.00", execution={"start_at": start_at.isoformat()})
        await wait_for(handle, {S.VALIDATED})
        await handle.signal("amend", {"limit_price": "999.00"})
        await wait_for(handle, lambda s: s.state == S.ACCEPTED and s.limit_price == Decimal("999.00"))
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.limit_price == Decimal("999.00"), snap)


@scenario("sim-start-at-cancelled-by-update")
async def _(st: Stage) -> None:
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(hours=1)
        handle = await st.start(execution={"start_at": start_at.isoformat()})
        await wait_for(handle, {S.VALIDATED})
        snap = await update(handle, "cancel_order", {"reason": "not today"})
    expect(snap.state == S.CANCELLED and S.SUBMITTED not in states(snap), snap)


@scenario("sim-expired-before-submission")
async def _(st: Stage) -> None:
    async with st.worker():
        now = datetime.now(timezone.utc)
        snap = await st.run(order_type="limit", limit_price="1000.00", time_in_force="GTD",
                            expire_at=(now + timedelta(seconds=1)).isoformat(),
                            execution={"start_at": (now + timedelta(seconds=2)).isoformat()})
    expect(snap.state == S.EXPIRED and S.SUBMITTED not in states(snap), snap)


@scenario("sim-gtd-expires-while-resting")
async def _(st: Stage) -> None:
    async with st.worker():
        expire_at = datetime.now(timezone.utc) + timedelta(seconds=3)
        snap = await st.run(order_type="limit", limit_price="1000.00", time_in_force="GTD",
                            expire_at=expire_at.isoformat())
    expect(snap.state == S.EXPIRED and snap.reason == "expire_at reached", snap)


@scenario("sim-cancel-resting-by-signal")
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        await handle.signal("cancel", {"reason": "strategy flat"})
        await handle.signal("cancel", {"reason": "delivered twice"})
        snap = await handle.result()
    expect(snap.state == S.CANCELLED and snap.reason == "strategy flat", snap)


@scenario("sim-cancel-resting-by-update")
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        snap = await update(handle, "cancel_order", {"reason": "by update"})
    expect(snap.state == S.CANCELLED, snap)


@scenario("sim-cancel-not-found-at-venue")
async def _(st: Stage) -> None:
    """The venue no longer knows the order (an operator purged it): the cancel's NOT_FOUND ends it."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await st.redis.delete(f"sim:simulation:order:{accepted.client_order_id}")
        await handle.signal("cancel", {"reason": "gone"})
        snap = await handle.result()
    expect(snap.state == S.CANCELLED and S.PENDING_CANCEL in states(snap), snap)


@scenario("sim-cancelled-at-venue-seen-by-poller")
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await asyncio.sleep(0.5)  # the poller has listed it once
        venue = SimulatedVenue(st.redis, st.settings.execution.simulation)
        await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=accepted.client_order_id,
                                         symbol="ETH/USDT"))
        snap = await asyncio.wait_for(handle.result(), 20)
    expect(snap.state == S.CANCELLED and snap.reason == "cancelled at the venue", snap)


@scenario("sim-amend-native-update-and-signal")
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        amended = await update(handle, "amend_order", {"limit_price": "1001.00"})
        expect(amended.limit_price == Decimal("1001.00"), amended)
        await handle.signal("amend", {"quantity": "0.2"})
        await wait_for(handle, lambda s: s.quantity == Decimal("0.2") and s.state == S.ACCEPTED)
        reason = await refused_update(handle, "amend_order", {"limit_price": "1000.001"})
        expect("tick size" in reason, None, reason)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and states(snap).count(S.PENDING_AMEND) == 2, snap)


@scenario("sim-amend-answer-lost-took")
async def _(st: Stage) -> None:
    """A native amend applied at the venue with its answer lost: the order reconciles, finds the
    venue holding the amended terms, and takes them (the amend-in-doubt patch)."""
    await st.redis.hset(FAULTS_KEY, "amend_lost_ack_next", 1)
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        reason = await refused_update(handle, "amend_order", {"quantity": "0.2"})
        expect("amend outcome unknown" in reason, None, reason)
        taken = await wait_for(handle, lambda s: s.quantity == Decimal("0.2") and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(S.UNKNOWN in states(taken) and snap.state == S.CANCELLED and snap.quantity == Decimal("0.2"), snap)


@scenario("sim-amend-refused-by-venue-after-fill", attempts=2)
async def _(st: Stage) -> None:
    """Filled at the venue, not yet seen (no poller): the venue refuses the amend, then the cancel
    finds the fill."""
    async with st.worker(poller_s=None):
        side, price, fills_at = future_crossing("ETH/USDT")
        handle = await st.start(quantity="0.1", side=side, order_type="limit", limit_price=str(price))
        await wait_for(handle, {S.ACCEPTED})
        await sleep_until(fills_at + 1.2)
        reason = await refused_update(handle, "amend_order", {"quantity": "0.2"})
        expect("venue refused the amend" in reason, None, reason)
        await handle.signal("cancel", {"reason": "too late"})
        snap = await handle.result()
    expect(snap.state == S.FILLED and states(snap)[-2:] == [S.PENDING_CANCEL, S.FILLED], snap)


@scenario("sim-amend-and-cancel-in-one-task")
async def _(st: Stage) -> None:
    """An amend queued by signal, then a cancel before the loop runs: the cancel wins, the amend
    update waiting on it returns the cancelled order."""
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        await handle.signal("amend", {"limit_price": "999.00"})
        await handle.signal("cancel", {"reason": "changed my mind"})
        snap = await handle.result()
    expect(snap.state == S.CANCELLED, snap)


@scenario("sim-amend-update-and-signal-in-one-task")
async def _(st: Stage) -> None:
    """With the worker stopped, an amend update and then an amend signal wait for the same workflow
    task: they are carried out signal first, as a replay meets them (the amends-in-history-order
    patch), and each once."""
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
    amended = asyncio.create_task(update(handle, "amend_order", {"quantity": "0.3"}))
    await asyncio.sleep(0.5)
    await handle.signal("amend", {"limit_price": "1001.00"})
    async with st.worker():
        snap = await asyncio.wait_for(amended, 30)
        expect(snap.quantity == Decimal("0.3"), snap)
        await wait_for(handle, lambda s: s.limit_price == Decimal("1001.00") and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and states(snap).count(S.PENDING_AMEND) == 2, snap)


@scenario("sim-amend-refused-on-arrival-by-signal", attempts=2)
async def _(st: Stage) -> None:
    """Amend signals the order refuses as they arrive: at or below the filled quantity, off the tick
    size; then one it takes, and a cancel."""
    async with st.worker():
        handle = await st.start(quantity="60", order_type="limit", limit_price=price_touching())
        first = await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED})
        expect(first.state == S.PARTIALLY_FILLED, first)
        await handle.signal("amend", {"quantity": str(first.filled_quantity)})
        await handle.signal("amend", {"limit_price": "1000.001"})
        await handle.signal("amend", {"quantity": "61"})
        await wait_for(handle, lambda s: s.quantity == Decimal("61"))
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and states(snap).count(S.PENDING_AMEND) == 1, snap)


@scenario("sim-amend-market-price-refused-while-waiting")
async def _(st: Stage) -> None:
    """A market order waiting for its start_at: a new limit price is refused (it has none)."""
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(hours=1)
        handle = await st.start(execution={"start_at": start_at.isoformat()})
        await wait_for(handle, {S.VALIDATED})
        await handle.signal("amend", {"limit_price": "3000.00"})
        await asyncio.sleep(0.3)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and S.SUBMITTED not in states(snap), snap)


@scenario("sim-cancel-then-amend-in-one-task", attempts=2)
async def _(st: Stage) -> None:
    """A cancel, then at once an amend: the amend is refused on arrival (the order is being cancelled,
    or already cancelled while its last state is published)."""
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        await handle.signal("cancel", {"reason": "changed my mind"})
        await handle.signal("amend", {"limit_price": "999.00"})
        snap = await handle.result()
    expect(snap.state == S.CANCELLED and S.PENDING_AMEND not in states(snap), snap)


async def closed(handle: WorkflowHandle, timeout: float = 30) -> WorkflowExecutionStatus:
    """Wait until the order's workflow has closed, however it closed."""
    deadline = time.monotonic() + timeout
    while (status := (await handle.describe()).status) == WorkflowExecutionStatus.RUNNING:
        if time.monotonic() > deadline:
            raise AssertionError(f"{handle.id} still running")
        await asyncio.sleep(0.1)
    return status


CLOSED_BY_CANCELLATION = {WorkflowExecutionStatus.CANCELED, WorkflowExecutionStatus.COMPLETED}


@scenario("sim-workflow-cancelled-while-resting")
async def _(st: Stage) -> None:
    """Temporal-level cancellation of the order's workflow (tctl/UI, or a client's handle.cancel())."""
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        await handle.cancel()
        status = await closed(handle)
    expect(status in CLOSED_BY_CANCELLATION, None, str(status))


@scenario("sim-workflow-cancelled-while-waiting-to-start")
async def _(st: Stage) -> None:
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(hours=1)
        handle = await st.start(execution={"start_at": start_at.isoformat()})
        await wait_for(handle, {S.VALIDATED})
        await handle.cancel()
        status = await closed(handle)
    expect(status in CLOSED_BY_CANCELLATION, None, str(status))


@scenario("sim-lost-ack-reconciled")
async def _(st: Stage) -> None:
    await st.redis.hset(FAULTS_KEY, "lost_ack_next", 1)
    async with st.worker():
        snap = await st.run(quantity="0.2")
    expect(states(snap) == [S.CREATED, S.VALIDATED, S.SUBMITTED, S.UNKNOWN, S.FILLED], snap)


@scenario("sim-lost-ack-resting-reconciled-accepted")
async def _(st: Stage) -> None:
    await st.redis.hset(FAULTS_KEY, "lost_ack_next", 1)
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(states(snap)[:5] == [S.CREATED, S.VALIDATED, S.SUBMITTED, S.UNKNOWN, S.ACCEPTED], snap)


@scenario("sim-execution-timeout-reconciled")
async def _(st: Stage) -> None:
    await st.redis.hset(FAULTS_KEY, "hang_next", 1)
    async with st.worker():
        snap = await st.run(quantity="0.2")
    unknown = next((t for t in snap.transitions if t.state == S.UNKNOWN), None)
    expect(snap.state == S.FILLED and unknown is not None and "submit outcome unknown" in unknown.reason, snap)


@scenario("sim-venue-update-without-fills-fetches")
async def _(st: Stage) -> None:
    """A report listed without its trades (as Binance lists open orders) and more filled than known:
    the workflow fetches the order in full."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await handle.signal("venue_update", VenueOrderReport(
            exchange="simulation", client_order_id=accepted.client_order_id, symbol="ETH/USDT",
            status="partially_filled",
            quantity=Decimal("0.1"), limit_price=Decimal("1000.00"), filled_quantity=Decimal("0.05"),
            fills_complete=False))
        await asyncio.sleep(1.0)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.filled_quantity == 0, snap)


@scenario("sim-continue-as-new")
async def _(st: Stage) -> None:
    """A long-lived order continues as new when the server suggests it (the recorder's dev server does
    at 200 events); the venue's reports arrive as the poller sends them. The next run is cancelled."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        venue = SimulatedVenue(st.redis, st.settings.execution.simulation)
        ref = VenueOrderRef(exchange="simulation", client_order_id=accepted.client_order_id, symbol="ETH/USDT")
        first_run = st.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        for _ in range(120):
            await handle.signal("venue_update", await venue.fetch(ref))
            if (await first_run.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                break
        else:
            raise AssertionError("the order never continued as new")
        await asyncio.sleep(0.3)
        current = st.client.get_workflow_handle(handle.id, result_type=OrderSnapshot)
        await current.signal("amend", {"limit_price": "999.00"})
        await wait_for(current, lambda s: s.limit_price == Decimal("999.00") and s.state == S.ACCEPTED)
        snap = await update(current, "cancel_order", {"reason": "end"})
    expect(snap.state == S.CANCELLED, snap)


# --- simulation, time-skipping server --------------------------------------------------------
@scenario("skip-gtd-expires-after-3-days")
async def _(st: Stage) -> None:
    async with st.worker(skipping=True):
        now = await st.svc.skipping.get_current_time()
        snap = await st.run(order_type="limit", limit_price="1000.00", time_in_force="GTD",
                            expire_at=(now + timedelta(days=3)).isoformat())
    expect(snap.state == S.EXPIRED and snap.reason == "expire_at reached", snap)


@scenario("skip-start-at-6-hours")
async def _(st: Stage) -> None:
    async with st.worker(skipping=True):
        now = await st.svc.skipping.get_current_time()
        snap = await st.run(execution={"start_at": (now + timedelta(hours=6)).isoformat()})
    expect(snap.state == S.FILLED, snap)


@scenario("skip-own-polls-back-off-then-cancel")
async def _(st: Stage) -> None:
    """No poller: the order's own fallback polls, backing off while nothing happens."""
    async with st.worker(skipping=True, poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await st.svc.skipping.sleep(timedelta(hours=3))
        await handle.signal("cancel", {"reason": "end"})
        snap = await handle.result()
    expect(snap.state == S.CANCELLED, snap)


@scenario("skip-own-poll-finds-fill", attempts=2)
async def _(st: Stage) -> None:
    async with st.worker(skipping=True, poller_s=None):
        side, price, fills_at = future_crossing("ETH/USDT")
        handle = await st.start(quantity="0.1", side=side, order_type="limit", limit_price=str(price))
        await wait_for(handle, {S.ACCEPTED})
        await sleep_until(fills_at + 1.2)
        snap = await handle.result()
    expect(snap.state == S.FILLED and states(snap)[-2] == S.ACCEPTED, snap)


# --- direct mode: the real ccxt client against the exchange emulators -------------------------
def _direct_fill(venue: str) -> None:
    @scenario(f"{venue}-market-fill")
    async def _(st: Stage) -> None:
        async with st.worker(st.direct((venue,)), poll_exchanges=(venue,)):
            snap = await st.run(quantity="0.01", exchange=venue)
        expect(snap.state == S.FILLED and snap.exchange == venue, snap)

    @scenario(f"{venue}-limit-fill-via-poller", attempts=2)
    async def _(st: Stage) -> None:
        async with st.worker(st.direct((venue,), direct={"poll_interval_ms": 300}), poller_s=0.3,
                             poll_exchanges=(venue,)):
            side, price, fills_at = future_crossing("ETH/USDT")
            handle = await st.start(quantity="0.01", side=side, order_type="limit", limit_price=str(price),
                                    exchange=venue)
            snap = await asyncio.wait_for(handle.result(), 40)
        expect(snap.state == S.FILLED and S.ACCEPTED in states(snap), snap)

    @scenario(f"{venue}-cancel-after-venue-fill", attempts=2)
    async def _(st: Stage) -> None:
        async with st.worker(st.direct((venue,)), poller_s=None):
            side, price, fills_at = future_crossing("ETH/USDT")
            handle = await st.start(quantity="0.01", side=side, order_type="limit", limit_price=str(price),
                                    exchange=venue)
            await wait_for(handle, {S.ACCEPTED})
            await sleep_until(fills_at + 1.2)
            await handle.signal("cancel", {"reason": "too late"})
            snap = await handle.result()
        expect(snap.state == S.FILLED and states(snap)[-2:] == [S.PENDING_CANCEL, S.FILLED], snap)


for _venue in ("binance", "bybit"):
    _direct_fill(_venue)


@scenario("binance-cancel-and-replace")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        amended = await update(handle, "amend_order", {"limit_price": "1490.00"})
        expect(amended.limit_price == Decimal("1490.00"), amended)
        await handle.signal("amend", {"quantity": "0.03"})
        await wait_for(handle, lambda s: s.quantity == Decimal("0.03") and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED, snap)


@scenario("binance-replace-after-venue-fill", attempts=2)
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",)), poller_s=None):
        side, price, fills_at = future_crossing("ETH/USDT")
        handle = await st.start(quantity="0.01", side=side, order_type="limit", limit_price=str(price),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        await sleep_until(fills_at + 1.2)
        try:  # the update ends with the order: refused, or answered with the filled order
            await update(handle, "amend_order", {"quantity": "0.02"})
        except WorkflowUpdateFailedError as error:
            expect("filled before the amend" in str(error.cause), None, str(error.cause))
        snap = await handle.result()
    expect(snap.state == S.FILLED and states(snap)[-2:] == [S.PENDING_AMEND, S.FILLED], snap)


@scenario("binance-replacement-unknown")
async def _(st: Stage) -> None:
    """The replacement's create gets no answer: unknown, reconciled to the live replacement.
    (A replacement the venue rejects cannot be recorded on release-0.1: accepted -> rejected is not
    in the transition table, so that workflow task fails again and again.)"""
    async with st.worker(st.direct(("binance",), timeout_ms=1000), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="drop_after_accept", endpoints=["create"])
        await handle.signal("amend", {"limit_price": "1490.00"})
        await wait_for(handle, lambda s: S.UNKNOWN in states(s) and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.limit_price == Decimal("1490.00"), snap)


@scenario("binance-replace-cancel-unknown")
async def _(st: Stage) -> None:
    """The cancel half of a cancel-and-replace gets no answer: unknown, reconciled, still live."""
    async with st.worker(st.direct(("binance",), timeout_ms=1000), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="timeout_after_accept", endpoints=["cancel"], delay_ms=3000)
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("unknown" in reason, None, reason)
        snap = await handle.result()
    expect(S.UNKNOWN in states(snap) and snap.state == S.CANCELLED, snap)


@scenario("bybit-amend-native-and-cancel")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("bybit",)), poll_exchanges=("bybit",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("bybit"),
                                exchange="bybit")
        await wait_for(handle, {S.ACCEPTED})
        amended = await update(handle, "amend_order", {"limit_price": "1490.00"})
        expect(amended.limit_price == Decimal("1490.00"), amended)
        await handle.signal("amend", {"quantity": "0.03"})
        await wait_for(handle, lambda s: s.quantity == Decimal("0.03") and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED, snap)


@scenario("bybit-amend-rejected")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("bybit",)), poll_exchanges=("bybit",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("bybit"),
                                exchange="bybit")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("bybit").fault(kind="reject", endpoints=["amend"])
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("venue refused the amend" in reason, None, reason)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED, snap)


@scenario("bybit-amend-unknown-reconciled")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("bybit",), timeout_ms=1000), poll_exchanges=("bybit",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("bybit"),
                                exchange="bybit")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("bybit").fault(kind="drop_after_accept", endpoints=["amend"])
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("unknown" in reason, None, reason)
        await wait_for(handle, {S.ACCEPTED})
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(S.UNKNOWN in states(snap) and snap.state == S.CANCELLED, snap)


@scenario("binance-partial-cancel-unknown-reconciled-live", attempts=2)
async def _(st: Stage) -> None:
    """Partially filled; the cancel meets a 5xx (the venue may have acted): unknown; reconciliation
    finds the order still open with the fills already counted, so partially filled again; the
    cancel is retried."""
    async with st.worker(st.direct(("binance",)), poller_s=None):
        side, price = await touch_moving_away()
        handle = await st.start(quantity="60", side=side, order_type="limit", limit_price=price, exchange="binance")
        first = await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED})
        expect(first.state == S.PARTIALLY_FILLED, first)
        st.emulator("binance").fault(kind="server_error", endpoints=["cancel"])
        await handle.signal("cancel", {"reason": "done"})
        snap = await asyncio.wait_for(handle.result(), 30)
    expect(snap.state == S.CANCELLED and states(snap)[-4:] == [S.UNKNOWN, S.PARTIALLY_FILLED, S.PENDING_CANCEL,
                                                             S.CANCELLED], snap)


@scenario("binance-replace-after-partial-venue-fill", attempts=2)
async def _(st: Stage) -> None:
    """Filled in part at the venue, not yet seen (no poller): the cancel half of a cancel-and-replace
    finds more filled than the new quantity, so the order ends filled at what it got."""
    async with st.worker(st.direct(("binance",)), poller_s=None):
        side, price, fills_at = future_crossing("ETH/USDT")
        quantity = "250" if side == "buy" else "95"  # more than one second of the book's level; within balance
        handle = await st.start(quantity=quantity, side=side, order_type="limit", limit_price=str(price),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        await sleep_until(fills_at + 0.3)
        try:
            await update(handle, "amend_order", {"quantity": "1"})
        except WorkflowUpdateFailedError as error:
            expect("filled before the amend" in str(error.cause), None, str(error.cause))
        snap = await handle.result()
    expect(snap.state == S.FILLED and Decimal(1) <= snap.filled_quantity < Decimal(quantity)
           and "filled before the amend could apply" in (snap.reason or ""), snap)


@scenario("binance-workflow-cancelled-during-submission")
async def _(st: Stage) -> None:
    """The workflow is cancelled while the venue holds its create: the venue call is interrupted."""
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="slow", endpoints=["create"], delay_ms=1500)
        handle = await st.start(quantity="0.01", exchange="binance")
        await asyncio.sleep(0.7)  # preparation done, the create held at the venue
        await handle.cancel()
        status = await closed(handle)
    expect(status in CLOSED_BY_CANCELLATION, None, str(status))


@scenario("binance-cancel-unknown-reconciled")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",), timeout_ms=1000), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="timeout_after_accept", endpoints=["cancel"], delay_ms=3000)
        await handle.signal("cancel", {"reason": "done"})
        snap = await asyncio.wait_for(handle.result(), 30)
    expect(S.UNKNOWN in states(snap) and snap.state == S.CANCELLED, snap)


@scenario("binance-poller-fetch-fails")
async def _(st: Stage) -> None:
    """A listed report without its trades and more filled than known, while every read fails: the
    workflow's fetch gives up quietly and the order carries on."""
    settings = st.direct(("binance",), orders={"retry_attempts": 1})
    async with st.worker(settings, poller_s=None):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        accepted = await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="server_error", endpoints=["query"], rate=1.0)
        await handle.signal("venue_update", VenueOrderReport(
            exchange="binance", client_order_id=accepted.client_order_id, symbol="ETH/USDT",
            status="partially_filled", quantity=Decimal("0.02"), limit_price=Decimal("1500.00"),
            filled_quantity=Decimal("0.01"), fills_complete=False))
        await asyncio.sleep(1.5)
        st.emulator("binance").clear_faults()
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.filled_quantity == 0, snap)


@scenario("binance-rate-limited-waits")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="rate_limit", endpoints=["create"], retry_after_s=1)
        snap = await st.run(quantity="0.01", exchange="binance")
    expect(snap.state == S.FILLED, snap)


@scenario("binance-ban-waits")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="ban", endpoints=["create"], ban_s=2, retry_after_s=2)
        snap = await st.run(quantity="0.01", exchange="binance")
    expect(snap.state == S.FILLED, snap)


@scenario("binance-breaker-opens-then-waits")
async def _(st: Stage) -> None:
    """5xx before processing, retried (nothing was sent); the breaker opens after 2 failures and
    the order waits on it durably, then goes out."""
    breaker = {"failure_threshold": 2, "open_seconds": 2, "on_open": "wait"}
    async with st.worker(st.direct(("binance",), direct={"circuit_breaker": breaker}), poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="server_error", endpoints=["create"], count=2)
        snap = await st.run(quantity="0.01", exchange="binance")
    expect(snap.state == S.FILLED, snap)


@scenario("binance-unreachable-after-start-wait")
async def _(st: Stage) -> None:
    """The venue goes away while the order waits for its start: nothing can be sent (connections
    refused). Release 0.1 retries the create and fails the order; a release that reads the venue's
    price again after the wait denies it (no price)."""
    logs = st.svc.workdir / st.task_queue
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        own = stack.enter_context(running_emulators(logs, ("binance",)))
        settings = direct_settings(st.settings, own, ("binance",))
        async with st.worker(settings, poller_s=None):
            start_at = datetime.now(timezone.utc) + timedelta(seconds=3)
            handle = await st.start(quantity="0.01", exchange="binance", execution={"start_at": start_at.isoformat()})
            await wait_for(handle, {S.VALIDATED})
            stack.close()  # the emulator stops: connections are refused from now on
            snap = await asyncio.wait_for(handle.result(), 30)
    expect(snap.state in (S.FAILED, S.DENIED), snap)


@scenario("binance-stale-requests-retries-exhausted-failed")
async def _(st: Stage) -> None:
    """Every create reaches the venue after its receive window (held 1.5 s, window 1 s): refused
    unprocessed (-1021, nothing placed), retried retry_attempts times, then the order is failed."""
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 4000}, recv_window_ms=1000, timeout_ms=3000)
    async with st.worker(settings, poller_s=None):
        attempts = settings.orders.retry_attempts + 1
        st.emulator("binance").fault(kind="slow", endpoints=["create"], count=attempts, delay_ms=1500)
        snap = await asyncio.wait_for(st.run(quantity="0.01", exchange="binance"), 60)
    expect(snap.state == S.FAILED and "after retries" in snap.reason, snap)


@scenario("binance-busy-too-long-failed")
async def _(st: Stage) -> None:
    """A ban longer than the order may wait (max_wait_s): failed, nothing sent."""
    settings = st.direct(("binance",), direct={"max_wait_s": 1.0}, orders={"retry_attempts": 1})
    async with st.worker(settings, poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="ban", endpoints=["create"], ban_s=4, retry_after_s=4)
        snap = await st.run(quantity="0.01", exchange="binance")
        st.emulator("binance").clear_faults()
    expect(snap.state == S.FAILED, snap)


@scenario("binance-unknown-not-found-resubmitted")
async def _(st: Stage) -> None:
    """The create is held past our timeout and past the venue's receive window, so the venue refuses
    it: reconciliation finds nothing, waits out the window, and sends it again under the same id."""
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 3000}, timeout_ms=1000, recv_window_ms=1000)
    async with st.worker(settings, poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="slow", endpoints=["create"], delay_ms=2500)
        snap = await asyncio.wait_for(st.run(quantity="0.01", exchange="binance"), 60)
    expect(snap.state == S.FILLED and S.UNKNOWN in states(snap), snap)


@scenario("binance-unknown-cancelled-never-received")
async def _(st: Stage) -> None:
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 3000}, timeout_ms=1000, recv_window_ms=3000)
    async with st.worker(settings, poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="slow", endpoints=["create"], delay_ms=4500)
        handle = await st.start(quantity="0.01", exchange="binance")
        await wait_for(handle, {S.UNKNOWN})
        await handle.signal("cancel", {"reason": "abandon"})
        snap = await asyncio.wait_for(handle.result(), 60)
    expect(snap.state == S.CANCELLED and "never received" in snap.reason, snap)


@scenario("binance-reconcile-fetch-fails-then-finds")
async def _(st: Stage) -> None:
    settings = st.direct(("binance",), orders={"retry_attempts": 0}, timeout_ms=1000)
    async with st.worker(settings, poller_s=None):
        emulator = st.emulator("binance")
        emulator.fault(kind="drop_after_accept", endpoints=["create"])
        emulator.fault(kind="server_error", endpoints=["query"], count=3)
        snap = await asyncio.wait_for(st.run(quantity="0.01", exchange="binance"), 60)
    expect(snap.state == S.FILLED and S.UNKNOWN in states(snap), snap)


async def open_binance_breaker(st: Stage, open_s: int) -> None:
    """Two failures recorded in Binance's shared gate, as the workers saw them: its breaker opens."""
    limits = GateLimits(orders=10, window_ms=1000, weight_per_s=20, failure_threshold=2, open_s=open_s,
                        max_wait_ms=500, probe_timeout_ms=1000)
    gate = VenueGate(st.redis, "binance", "default", limits)
    for _ in range(2):
        await gate.failed("ExchangeNotAvailable: 503")


@scenario("binance-breaker-open-reroutes")
async def _(st: Stage) -> None:
    breaker = {"failure_threshold": 2, "open_seconds": 30, "on_open": "reroute"}
    settings = st.direct(("binance", "bybit"), direct={"circuit_breaker": breaker})
    await open_binance_breaker(st, open_s=30)
    async with st.worker(settings, poll_exchanges=("bybit",)):
        snap = await st.run(quantity="0.01")
    expect(snap.state == S.FILLED and snap.exchange == "bybit", snap)


@scenario("binance-breaker-open-pinned-order-prepared-again")
async def _(st: Stage) -> None:
    """Release 0.6: an order pinned to a venue whose breaker is open. prepare_and_place's one attempt
    is refused by the breaker; prepare_order retries until the breaker lets a probe through, and the
    order goes out and fills."""
    breaker = {"failure_threshold": 2, "open_seconds": 3, "on_open": "wait"}
    settings = st.direct(("binance",), direct={"circuit_breaker": breaker})
    await open_binance_breaker(st, open_s=3)
    async with st.worker(settings, poll_exchanges=("binance",)):
        snap = await asyncio.wait_for(st.run(quantity="0.01", exchange="binance"), 60)
    expect(snap.state == S.FILLED, snap)


# --- release 0.2: workflow cancellation, reconciliation, cancel-and-replace confirmation ----------
@scenario("binance-workflow-cancelled-while-unknown")
async def _(st: Stage) -> None:
    """The create is held past our timeout (unknown); the workflow is cancelled while reconciling:
    the order's cancel goes on in this run, and the create, refused after the receive window, is
    never found: cancelled."""
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 3000}, timeout_ms=1000, recv_window_ms=3000)
    async with st.worker(settings, poll_exchanges=("binance",)):
        st.emulator("binance").fault(kind="slow", endpoints=["create"], delay_ms=4500)
        handle = await st.start(quantity="0.01", exchange="binance")
        await wait_for(handle, {S.UNKNOWN})
        await handle.cancel()
        status = await closed(handle, timeout=60)
        snap = await handle.query("status", result_type=OrderSnapshot)
    expect(status in CLOSED_BY_CANCELLATION and snap.state == S.CANCELLED and S.UNKNOWN in states(snap), snap)


@scenario("binance-workflow-cancelled-while-cancel-held")
async def _(st: Stage) -> None:
    """A cancel is held at the venue (pending cancel) when the workflow is cancelled: the venue call
    is interrupted, so the order goes to unknown and is reconciled to its real end. The cancel is
    held longer than a workflow task lasts (its local activity heartbeats the task), so the
    cancellation request is delivered while the call is still under way."""
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 20000}, timeout_ms=20000)
    async with st.worker(settings, poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="slow", endpoints=["cancel"], delay_ms=14000)
        await handle.signal("cancel", {"reason": "flat"})
        await asyncio.sleep(1.0)
        await handle.cancel()
        status = await closed(handle, timeout=60)
        snap = await handle.query("status", result_type=OrderSnapshot)
    interrupted = any(t.state == S.UNKNOWN and "interrupted" in (t.reason or "") for t in snap.transitions)
    expect(status in CLOSED_BY_CANCELLATION and snap.state == S.CANCELLED and interrupted, snap)


def _report(st: Stage, snap: OrderSnapshot, **fields) -> VenueOrderReport:
    """What the account poller would send for this order, with `fields` as the venue says them."""
    return VenueOrderReport(exchange=snap.exchange, client_order_id=snap.client_order_id, symbol=snap.symbol,
                            quantity=snap.quantity, limit_price=snap.limit_price, **fields)


@scenario("sim-venue-status-unrecognized-reconciled")
async def _(st: Stage) -> None:
    """A status no venue table knows (UNRECOGNIZED, its raw word in the reason): unknown, then
    reconciled by fetching the order, found live, then cancelled."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await handle.signal("venue_update", _report(st, accepted, status="unrecognized",
                                                    reason="unrecognized simulation order status 'HALTED'"))
        await wait_for(handle, lambda s: S.UNKNOWN in states(s) and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    unknown = next((t for t in snap.transitions if t.state == S.UNKNOWN), None)
    expect(snap.state == S.CANCELLED and unknown is not None and "HALTED" in (unknown.reason or ""), snap)


@scenario("sim-venue-fill-past-quantity-anomaly")
async def _(st: Stage) -> None:
    """A venue report with a fill larger than the order (the venue's book disagrees with ours): the
    fill cannot be taken, the anomaly is recorded and counted, the order reconciles, then is cancelled."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        fill = VenueFill(trade_id="phantom-1", quantity=Decimal("5"), price=Decimal("1000.00"),
                         at=datetime.now(timezone.utc))
        await handle.signal("venue_update", _report(st, accepted, status="partially_filled",
                                                    filled_quantity=Decimal("5"), fills=[fill]))
        await wait_for(handle, lambda s: s.anomalies >= 1 and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.anomalies >= 1 and S.UNKNOWN in states(snap)
           and snap.filled_quantity == 0, snap)


@scenario("sim-acknowledged-order-vanishes")
async def _(st: Stage) -> None:
    """An acknowledged order the venue no longer knows (purged by an operator) while it is reconciled:
    not found, looked for again after the receive window, then recorded as an anomaly and cancelled."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await st.redis.delete(f"sim:simulation:order:{accepted.client_order_id}")
        await handle.signal("venue_update", _report(st, accepted, status="unrecognized", reason="odd"))
        snap = await asyncio.wait_for(handle.result(), 40)
    expect(snap.state == S.CANCELLED and snap.anomalies >= 1 and "no longer knows" in (snap.last_anomaly or ""), snap)


@scenario("sim-venue-ended-after-partial-fills", attempts=2)
async def _(st: Stage) -> None:
    """Partially filled; the venue then closes the order as filled short of its quantity (all its
    fills already counted): the rest was ended by the venue, so the order is cancelled with them."""
    async with st.worker(poller_s=None):
        handle = await st.start(quantity="60", order_type="limit", limit_price=price_touching())
        first = await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED})
        expect(first.state == S.PARTIALLY_FILLED, first)
        await handle.signal("venue_update", _report(st, first, status="filled",
                                                    filled_quantity=first.filled_quantity, reason="self-trade"))
        snap = await asyncio.wait_for(handle.result(), 20)
    expect(snap.state == S.CANCELLED and snap.filled_quantity == first.filled_quantity
           and "ended the order" in (snap.reason or ""), snap)


@scenario("sim-malformed-requests-refused")
async def _(st: Stage) -> None:
    """Cancel and amend arguments that do not parse (unknown field, a number no decimal holds): a
    signal is dropped with a log line, an update is refused naming the field; the order is unchanged."""
    async with st.worker():
        handle = await st.start(order_type="limit", limit_price="1000.00")
        await wait_for(handle, {S.ACCEPTED})
        await handle.signal("cancel", {"reason": "x", "urgent": True})
        await handle.signal("amend", {"quantity": "NaN"})
        await handle.signal("amend", {"limit_price": "999.00", "colour": "red"})
        reason = await refused_update(handle, "amend_order", {"qty": "1"})
        expect("qty" in reason, None, reason)
        reason = await refused_update(handle, "cancel_order", {"reason": 7, "extra": 1})
        expect("extra" in reason, None, reason)
        unchanged = await handle.query("status", result_type=OrderSnapshot)
        expect(unchanged.state == S.ACCEPTED and unchanged.limit_price == Decimal("1000.00"), unchanged)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.reason == "done" and S.PENDING_AMEND not in states(snap), snap)


@scenario("binance-cancel-unknown-retried-after-backoff")
async def _(st: Stage) -> None:
    """Two cancels meet a 5xx (the venue may have acted): each time unknown, reconciled (still live),
    and the cancel tried again after a durable, growing backoff."""
    async with st.worker(st.direct(("binance",), orders={"retry_attempts": 0}), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="server_error", endpoints=["cancel"], count=2)
        await handle.signal("cancel", {"reason": "flat"})
        snap = await asyncio.wait_for(handle.result(), 30)
    unknown = [t for t in snap.transitions if "cancel outcome unknown" in (t.reason or "")]
    expect(snap.state == S.CANCELLED and len(unknown) == 2 and states(snap).count(S.PENDING_CANCEL) == 3, snap)


@scenario("binance-cancel-not-sent-while-banned")
async def _(st: Stage) -> None:
    """The cancel meets a ban longer than the order may wait (max_wait_s): refused unprocessed, so
    the order is live as it was; the cancel is tried again after the backoff until the ban ends."""
    settings = st.direct(("binance",), direct={"max_wait_s": 0.5}, orders={"retry_attempts": 0})
    async with st.worker(settings, poller_s=None):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="ban", endpoints=["cancel"], ban_s=2, retry_after_s=2)
        await handle.signal("cancel", {"reason": "flat"})
        snap = await asyncio.wait_for(handle.result(), 40)
    expect(snap.state == S.CANCELLED and snap.reason == "flat"
           and any("cancel not sent" in (t.reason or "") for t in snap.transitions), snap)


@scenario("binance-continue-as-new-with-cancel-under-way")
async def _(st: Stage) -> None:
    """A cancel the venue keeps refusing unprocessed (5xx) is retried on the backoff while venue
    reports keep arriving; the order continues as new with the cancel under way, and the next run
    carries it out once the venue answers again."""
    async with st.worker(st.direct(("binance",), orders={"retry_attempts": 0}), poller_s=None):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        accepted = await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="server_error", endpoints=["cancel"], rate=1.0)
        await handle.signal("cancel", {"reason": "flat"})
        first_run = st.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        report = _report(st, accepted, status="new")
        for _ in range(300):
            await handle.signal("venue_update", report)
            if (await first_run.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the order never continued as new")
        st.emulator("binance").clear_faults()
        current = st.client.get_workflow_handle(handle.id, result_type=OrderSnapshot)
        snap = await asyncio.wait_for(current.result(), 60)
    expect(snap.state == S.CANCELLED and snap.reason == "flat"
           and any("cancel outcome unknown" in (t.reason or "") for t in snap.transitions), snap)


@scenario("binance-replace-cancel-refused")
async def _(st: Stage) -> None:
    """The cancel half of a cancel-and-replace is refused by the venue: the amend is refused, the
    order stays working as it was."""
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="reject", endpoints=["cancel"])
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("venue refused the amend" in reason, None, reason)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.limit_price == Decimal(resting_price("binance")), snap)


@scenario("binance-replacement-and-original-refused")
async def _(st: Stage) -> None:
    """The venue refuses the amended replacement, then the original terms placed again too: the
    order, cancelled for the amend, is no longer working, and says so."""
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="reject", endpoints=["create"], count=2)
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("placing the original terms again failed" in reason, None, reason)
        snap = await asyncio.wait_for(handle.result(), 20)
    expect(snap.state == S.CANCELLED and "no longer working" in (snap.reason or ""), snap)


@scenario("binance-replace-after-partial-fill", attempts=2)
async def _(st: Stage) -> None:
    """Partially filled, then amended to a price further from the market: the old order's end
    (cancelled with its fills) is confirmed, and the replacement carries the remainder, resting."""
    async with st.worker(st.direct(("binance",)), poller_s=None):
        side, price = await touch_moving_away()
        handle = await st.start(quantity="60", side=side, order_type="limit", limit_price=price, exchange="binance")
        first = await wait_for(handle, {S.PARTIALLY_FILLED, S.FILLED})
        expect(first.state == S.PARTIALLY_FILLED, first)
        away = Decimal(price) * (Decimal("0.99") if side == "buy" else Decimal("1.01"))
        new_price = away.quantize(simulated_market("ETH/USDT").price_step)
        amended = await update(handle, "amend_order", {"limit_price": str(new_price)})
        expect(amended.limit_price == new_price and amended.state == S.PARTIALLY_FILLED, amended)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.filled_quantity >= first.filled_quantity
           and "replaced (cancel-and-replace amend)" in [t.reason for t in snap.transitions], snap)


@scenario("sim-venue-filled-without-trades-reconciled")
async def _(st: Stage) -> None:
    """A report that says filled without listing the trades (and says it lists them all): the order
    cannot count fills it has not seen, so it goes to unknown and reconciles (found resting)."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await handle.signal("venue_update", _report(st, accepted, status="filled", filled_quantity=Decimal("0.1")))
        await wait_for(handle, lambda s: S.UNKNOWN in states(s) and s.state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    unknown = next((t for t in snap.transitions if t.state == S.UNKNOWN), None)
    expect(snap.state == S.CANCELLED and snap.filled_quantity == 0 and unknown is not None
           and "fetching the fills" in (unknown.reason or ""), snap)


@scenario("bybit-amend-and-cancel-queued-during-amend")
async def _(st: Stage) -> None:
    """While a native amend is held at the venue, a second amend and then a cancel arrive: once the
    first amend is answered the cancel goes first and the queued amend is answered "being cancelled"."""
    async with st.worker(st.direct(("bybit",)), poll_exchanges=("bybit",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("bybit"),
                                exchange="bybit")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("bybit").fault(kind="slow", endpoints=["amend"], delay_ms=1200)
        await handle.signal("amend", {"limit_price": "1490.00"})
        await asyncio.sleep(0.4)  # the first amend is held at the venue
        await handle.signal("amend", {"limit_price": "1480.00"})
        await handle.signal("cancel", {"reason": "flat"})
        snap = await asyncio.wait_for(handle.result(), 30)
    expect(snap.state == S.CANCELLED and snap.limit_price == Decimal("1490.00")
           and states(snap).count(S.PENDING_AMEND) == 1, snap)


@scenario("binance-unknown-cancel-second-look-fails")
async def _(st: Stage) -> None:
    """Unknown create and a cancel: not found; the look after the receive window fails (5xx), so the
    order stays unknown and looks again after the backoff: cancelled, never received."""
    settings = st.direct(("binance",), orders={"execution_timeout_ms": 3000, "retry_attempts": 0},
                         timeout_ms=1000, recv_window_ms=3000)
    async with st.worker(settings, poller_s=None):
        emulator = st.emulator("binance")
        emulator.fault(kind="slow", endpoints=["create"], delay_ms=4500)
        handle = await st.start(quantity="0.02", exchange="binance")
        await wait_for(handle, {S.UNKNOWN})
        await handle.signal("cancel", {"reason": "abandon"})
        await asyncio.sleep(1.5)  # the first look has found nothing; the order waits out the window
        emulator.fault(kind="server_error", endpoints=["query"], count=1)
        snap = await asyncio.wait_for(handle.result(), 60)
    expect(snap.state == S.CANCELLED and "never received" in (snap.reason or ""), snap)


@scenario("binance-replacement-refused-original-unknown")
async def _(st: Stage) -> None:
    """The venue refuses the amended replacement; placing the original terms again gets no answer:
    unknown, reconciled by its client order id (found live), then cancelled."""
    async with st.worker(st.direct(("binance",), timeout_ms=1000), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        emulator = st.emulator("binance")
        emulator.fault(kind="reject", endpoints=["create"])
        emulator.fault(kind="drop_after_accept", endpoints=["create"])
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("placing the original terms again failed" in reason, None, reason)
        await wait_for(handle, {S.ACCEPTED})
        snap = await update(handle, "cancel_order", {"reason": "done"})
    replaced = any("re-placing the original terms" in (t.reason or "") for t in snap.transitions)
    expect(snap.state == S.CANCELLED and replaced and snap.limit_price == Decimal(resting_price("binance")), snap)


@scenario("sim-venue-report-rejected-after-acceptance")
async def _(st: Stage) -> None:
    """A venue report that says rejected for an order the venue had acknowledged (a late risk check):
    the venue's decision ends the order, rejected with the venue's reason."""
    async with st.worker(poller_s=None):
        handle = await st.start(order_type="limit", limit_price="1000.00")
        accepted = await wait_for(handle, {S.ACCEPTED})
        await handle.signal("venue_update", _report(st, accepted, status="rejected", reason="late risk check"))
        snap = await asyncio.wait_for(handle.result(), 20)
    expect(states(snap)[-2:] == [S.ACCEPTED, S.REJECTED] and snap.reason == "late risk check", snap)


@scenario("direct-smart-routed-to-cheaper-venue")
async def _(st: Stage) -> None:
    """Unpinned, two venues with different taker fees on the same price path: smart routing sends it
    to the cheaper all-in venue and says why on the order."""
    for venue, fee in (("binance", 0.001), ("bybit", 0.0002)):
        st.emulator(venue).shape(taker_fee=fee)
    settings = st.direct(("binance", "bybit"))
    execution = settings.execution.model_dump(mode="json")
    for venue, fee in (("binance", 0.001), ("bybit", 0.0002)):
        execution["direct"]["accounts"][venue].update(st.emulator(venue).account(taker_fee=fee))
    async with st.worker(settings.with_overrides(execution=execution), poller_s=None):
        snap = await st.run(quantity="0.02")
    expect(snap.state == S.FILLED and snap.exchange == "bybit"
           and (snap.routing_reason or "").startswith("bybit: best all-in"), snap)


@scenario("sim-denied-child-cap-below-venue-minimum")
async def _(st: Stage) -> None:
    """A child cap the venue's minimum order makes impossible: denied with the slicer's reason."""
    execution = {**st.settings.execution.model_dump(mode="json"), "max_child_quantity": {"ETH/USDT": "0.00005"}}
    async with st.worker(st.settings.with_overrides(execution=execution)):
        snap = await st.run(quantity="0.01")
    expect(snap.state == S.DENIED and "below_min_amount" in (snap.reason or "")
           and "below the venue minimum" in snap.reason, snap)
# --- parent orders: execution algorithms (issue 13) ----------------------------------------------
async def start_parent(st: Stage, **fields) -> WorkflowHandle:
    """A parent order through intake (a signal with execution.algo); kept with its children once done."""
    from workers.intake import start_order as intake_start

    signal = st.signal(**fields)
    await intake_start(st.client, st.settings, signal)
    handle = await first_run(st, signal.workflow_id)
    st.kept.append((signal.workflow_id, handle))
    return handle


async def first_run(st: Stage, workflow_id: str) -> WorkflowHandle:
    """A handle that knows its first run (save_histories follows the chain from it)."""
    run_id = (await st.client.get_workflow_handle(workflow_id).describe()).run_id
    return st.client.get_workflow_handle(workflow_id, run_id=run_id, first_execution_run_id=run_id,
                                         result_type=OrderSnapshot)


async def keep_children(st: Stage, parent: OrderSnapshot) -> None:
    st.kept.extend([(c.order_id, await first_run(st, c.order_id)) for c in parent.children])


@scenario("parent-twap-filled")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await (await start_parent(st, quantity="0.3", execution={"algo": "twap", "slices": 3, "duration_s": 3,
                                                                        "randomize_pct": 20})).result()
        await keep_children(st, snap)
    expect(snap.state == S.FILLED and len(snap.children) == 3 and snap.filled_quantity == Decimal("0.3"), snap)


@scenario("parent-twap-refused-child-returned")
async def _(st: Stage) -> None:
    await st.redis.hset(FAULTS_KEY, "reject_next", 1)
    async with st.worker():
        snap = await (await start_parent(st, quantity="0.2", execution={"algo": "twap", "slices": 2,
                                                                        "duration_s": 2})).result()
        await keep_children(st, snap)
    expect(snap.state == S.FILLED and snap.children[0].state == S.REJECTED
           and all(c.state == S.FILLED for c in snap.children[1:]), snap)


@scenario("parent-twap-amended-then-cancelled")
async def _(st: Stage) -> None:
    async with st.worker():
        handle = await start_parent(st, quantity="0.2", execution={"algo": "twap", "slices": 2, "duration_s": 60})
        await wait_for(handle, lambda s: bool(s.children) and s.children[0].state == S.FILLED)
        await update(handle, "amend_order", {"quantity": "0.3"})
        await handle.signal("amend", {"quantity": "0.4"})
        await wait_for(handle, lambda s: s.quantity == Decimal("0.4"))
        snap = await update(handle, "cancel_order", {"reason": "end"})
        await keep_children(st, snap)
    expect(snap.state == S.CANCELLED and len(snap.children) == 1 and snap.filled_quantity == Decimal("0.1"), snap)


@scenario("parent-iceberg-child-cancelled-refilled-then-cancelled")
async def _(st: Stage) -> None:
    """An iceberg resting below the market: its visible child is cancelled on its own, its quantity
    comes back and a new visible child is placed (amended to a new price first); then the parent is
    cancelled."""
    async with st.worker():
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        handle = await start_parent(st, quantity="0.3", order_type="limit",
                                    limit_price=str((quote.bid * Decimal("0.95")).quantize(Decimal("0.01"))),
                                    execution={"algo": "iceberg", "display_quantity": "0.1"})
        first = await wait_for(handle, lambda s: bool(s.children) and s.children[0].state == S.ACCEPTED)
        await handle.signal("amend", {"limit_price": str((quote.bid * Decimal("0.94")).quantize(Decimal("0.01")))})
        await st.client.get_workflow_handle(first.children[0].order_id).signal("cancel", {"reason": "by hand"})
        await wait_for(handle, lambda s: len(s.children) == 2 and s.children[1].state == S.ACCEPTED)
        snap = await update(handle, "cancel_order", {"reason": "end"})
        await keep_children(st, snap)
    expect(snap.state == S.CANCELLED and [c.state for c in snap.children] == [S.CANCELLED, S.CANCELLED], snap)


@scenario("parent-twap-capped-after-start-at")
async def _(st: Stage) -> None:
    """A TWAP with a price cap (IOC limit children) that starts 2 s after it is received."""
    async with st.worker():
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        snap = await (await start_parent(st, quantity="0.2", limit_price=str((quote.ask * Decimal("1.03")).quantize(
            Decimal("0.01"))), execution={"algo": "twap", "slices": 2, "duration_s": 2,
                                          "start_at": start_at.isoformat()})).result()
        await keep_children(st, snap)
    expect(snap.state == S.FILLED and snap.transitions[1].at < start_at <= snap.transitions[2].at, snap)


@scenario("parent-twap-continue-as-new")
async def _(st: Stage) -> None:
    """20 slices, one a second: the parent crosses the recorder's continue-as-new suggestion (200
    events) between two children and the next run finishes the schedule."""
    async with st.worker():
        handle = await start_parent(st, quantity="1.0", execution={"algo": "twap", "slices": 20, "duration_s": 20})
        snap = await handle.result()
        await keep_children(st, snap)
        status = (await st.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id).describe()).status
    expect(snap.state == S.FILLED and len(snap.children) == 20 and status == WorkflowExecutionStatus.CONTINUED_AS_NEW,
           snap)


@scenario("parent-route-split")
async def _(st: Stage) -> None:
    """The router's plan arrives as ParentOrderInput.route: one child per leg."""
    from oms.parent import ParentOrderInput
    from oms.routing import RouteLeg, RoutePlan

    async with st.worker():
        signal = st.signal(quantity="0.3")
        legs = [RouteLeg(exchange="simulation", quantity=Decimal(q), expected_average_price=Decimal("3000"),
                         expected_all_in_price=Decimal("3001")) for q in ("0.1", "0.2")]
        plan = RoutePlan(symbol="ETH/USDT", side="buy", quantity=Decimal("0.3"), legs=legs, reason="split: recorded")
        await st.client.start_workflow("ParentOrderWorkflow", ParentOrderInput(signal=signal, route=plan),
                                       id=signal.workflow_id, task_queue=st.task_queue)
        handle = await first_run(st, signal.workflow_id)
        st.kept.append((signal.workflow_id, handle))
        snap = await handle.result()
        await keep_children(st, snap)
    expect(snap.state == S.FILLED and [c.quantity for c in snap.children] == [Decimal("0.1"), Decimal("0.2")], snap)


@scenario("parent-workflow-cancelled")
async def _(st: Stage) -> None:
    """A resting iceberg cancelled as a Temporal workflow (UI, CLI): its open child is cancelled."""
    async with st.worker():
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        handle = await start_parent(st, quantity="0.2", order_type="limit",
                                    limit_price=str((quote.bid * Decimal("0.95")).quantize(Decimal("0.01"))),
                                    execution={"algo": "iceberg", "display_quantity": "0.1"})
        await wait_for(handle, lambda s: bool(s.children) and s.children[0].state == S.ACCEPTED)
        await handle.cancel()
        snap = await handle.result()
        await keep_children(st, snap)
    expect(snap.state == S.CANCELLED and [c.state for c in snap.children] == [S.CANCELLED], snap)


@scenario("parent-amends-refused-then-iceberg-merged")
async def _(st: Stage) -> None:
    """Amends a parent cannot take (a price on a market TWAP, a quantity below what is filled, off the
    lot size, one while it is being cancelled) are refused and change nothing; an iceberg whose
    remainder is too small for the venue sends it with its last visible child."""
    async with st.worker():
        handle = await start_parent(st, quantity="0.2", execution={"algo": "twap", "slices": 2, "duration_s": 60})
        await wait_for(handle, lambda s: bool(s.children) and s.children[0].state == S.FILLED)
        for amend in ({"limit_price": "3000"}, {"quantity": "0.05"}, {"quantity": "0.20001"}):
            await handle.signal("amend", amend)
        await handle.signal("cancel", {"reason": "end"})
        await handle.signal("amend", {"quantity": "0.5"})
        twap = await handle.result()
        await keep_children(st, twap)
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        iceberg = await (await start_parent(st, quantity="0.1001", order_type="limit",
                                            limit_price=str((quote.ask * Decimal("1.03")).quantize(Decimal("0.01"))),
                                            execution={"algo": "iceberg", "display_quantity": "0.1"})).result()
        await keep_children(st, iceberg)
    expect(twap.state == S.CANCELLED and twap.quantity == Decimal("0.2") and len(twap.children) == 1, twap)
    expect(iceberg.state == S.FILLED and [c.quantity for c in iceberg.children] == [Decimal("0.1001")], iceberg)


@scenario("parent-iceberg-refused-three-times")
async def _(st: Stage) -> None:
    """The venue refuses three visible children in a row: the parent stops, rejected."""
    await st.redis.hset(FAULTS_KEY, "reject_next", 3)
    async with st.worker():
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        snap = await (await start_parent(st, quantity="0.3", order_type="limit",
                                         limit_price=str((quote.ask * Decimal("1.03")).quantize(Decimal("0.01"))),
                                         execution={"algo": "iceberg", "display_quantity": "0.1"})).result()
        await keep_children(st, snap)
    expect(snap.state == S.REJECTED and [c.state for c in snap.children] == [S.REJECTED] * 3, snap)


@scenario("parent-denied-invalid-parameters")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await (await start_parent(st, execution={"algo": "twap", "duration_s": 30})).result()
    expect(snap.state == S.DENIED and (snap.reason or "").startswith("invalid_algo_parameters"), snap)


@scenario("sim-routed-split-into-parent")
async def _(st: Stage) -> None:
    """Unpinned, larger than either simulated venue's one-level book: the order's router splits it
    and the order continues as ParentOrderWorkflow, one child per venue."""
    simulation = {**st.settings.execution.simulation.model_dump(mode="json"), "depth_levels": 1,
                  "venues": {"simulation-b": {"taker_fee": 0.0004, "depth_levels": 1}}}
    settings = st.settings.with_overrides(execution={**st.settings.execution.model_dump(mode="json"),
                                                     "simulation": simulation})
    _, asks = await SimulatedVenue(st.redis, settings.execution.simulation).order_book("SOL/USDT", 1)
    quantity = (asks[0][1] * Decimal("1.5")).quantize(Decimal("0.01"))
    async with st.worker(settings):
        from workers.intake import start_order as intake_start

        signal = st.signal(symbol="SOL/USDT", quantity=str(quantity))
        await intake_start(st.client, settings, signal)
        handle = await first_run(st, signal.workflow_id)
        st.kept.append((signal.workflow_id, handle))
        snap = await st.client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot).result()
        await keep_children(st, snap)
    expect(snap.state == S.FILLED and snap.algo == "route"
           and {c.exchange for c in snap.children} == {"simulation", "simulation-b"}, snap)


@scenario("parent-denied-unknown-symbol")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await (await start_parent(st, symbol="NOPE/USDT",
                                         execution={"algo": "twap", "slices": 2, "duration_s": 10})).result()
    expect(snap.state == S.DENIED and "unknown_symbol" in (snap.reason or ""), snap)


@scenario("parent-iceberg-amend-below-working-refused")
async def _(st: Stage) -> None:
    """An amend below what the open child holds at the venue is refused (cancel instead); the
    iceberg keeps working until it is cancelled."""
    async with st.worker():
        quote = await SimulatedVenue(st.redis, st.settings.execution.simulation).quote("ETH/USDT")
        handle = await start_parent(st, quantity="0.3", order_type="limit",
                                    limit_price=str((quote.bid * Decimal("0.95")).quantize(Decimal("0.01"))),
                                    execution={"algo": "iceberg", "display_quantity": "0.1"})
        await wait_for(handle, lambda s: bool(s.children) and s.children[0].state == S.ACCEPTED)
        await handle.signal("amend", {"quantity": "0.05"})
        await handle.signal("cancel", {"reason": "end"})
        snap = await handle.result()
        await keep_children(st, snap)
    expect(snap.state == S.CANCELLED and snap.quantity == Decimal("0.3") and len(snap.children) == 1, snap)


# --- running ---------------------------------------------------------------------------------
# --- validation at the venue's price, amends validated in full, start_at amends (issue 11) --------
@scenario("sim-denied-algo-not-supported")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await st.run(execution={"algo": "twap", "slices": 4, "duration_s": 60})
    expect(snap.state == S.DENIED and "algo_not_supported" in (snap.reason or ""), snap)


@scenario("sim-denied-account-currency-eth-btc")
async def _(st: Stage) -> None:
    """1,000 ETH on ETH/BTC, valued in USDT through BTC/USDT."""
    async with st.worker():
        snap = await st.run(symbol="ETH/BTC", quantity="1000")
    expect(snap.state == S.DENIED and "above_max_order_value" in (snap.reason or "") and "USDT" in snap.reason, snap)


@scenario("sim-denied-reference-price-far")
async def _(st: Stage) -> None:
    async with st.worker():
        snap = await st.run(symbol="BTC/USDT", side="sell", quantity="0.001", reference_price="600")
    expect(snap.state == S.DENIED and "reference_price_far" in (snap.reason or ""), snap)


@scenario("sim-amend-refused-by-validation-then-applied")
async def _(st: Stage) -> None:
    limits = st.settings.account_limits.model_dump(mode="json")
    async with st.worker(st.settings.with_overrides(account_limits={**limits, "max_order_value": 1000})):
        handle = await st.start(symbol="BTC/USDT", quantity="0.0002", order_type="limit", limit_price="55000.00")
        await wait_for(handle, {S.ACCEPTED})
        too_big = await refused_update(handle, "amend_order", {"quantity": "10"})
        expect("above_max_order_value" in too_big, None, too_big)
        await handle.signal("amend", {"limit_price": "70000"})  # through the fat-finger band: refused
        amended = await update(handle, "amend_order", {"quantity": "0.0003"})
        expect(amended.quantity == Decimal("0.0003") and amended.limit_price == Decimal("55000.00"), amended)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and states(snap).count(S.PENDING_AMEND) == 1, snap)


@scenario("sim-start-at-amended-before-placement")
async def _(st: Stage) -> None:
    async with st.worker():
        start_at = datetime.now(timezone.utc) + timedelta(seconds=3)
        handle = await st.start(symbol="BTC/USDT", quantity="0.001", execution={"start_at": start_at.isoformat()})
        await wait_for(handle, {S.VALIDATED})
        amended = await update(handle, "amend_order", {"quantity": "0.002"})
        expect(amended.quantity == Decimal("0.002") and amended.state == S.VALIDATED, amended)
        await handle.signal("amend", {"quantity": "0.003"})
        snap = await handle.result()
    expect(snap.state == S.FILLED and snap.filled_quantity == Decimal("0.003"), snap)


@scenario("binance-replacement-refused-original-placed-again")
async def _(st: Stage) -> None:
    async with st.worker(st.direct(("binance",)), poll_exchanges=("binance",)):
        handle = await st.start(quantity="0.02", order_type="limit", limit_price=resting_price("binance"),
                                exchange="binance")
        await wait_for(handle, {S.ACCEPTED})
        st.emulator("binance").fault(kind="reject", endpoints=["create"])
        reason = await refused_update(handle, "amend_order", {"limit_price": "1490.00"})
        expect("original terms" in reason, None, reason)
        snap = await update(handle, "cancel_order", {"reason": "done"})
    expect(snap.state == S.CANCELLED and snap.limit_price == Decimal(resting_price("binance")), snap)


async def save_histories(st: Stage, out: Path, mkdir: bool = False) -> list[Path]:
    """Every run of every kept order (a continue-as-new chain is several runs)."""
    if mkdir:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for workflow_id, handle in st.kept:
        run_id, runs = handle.first_execution_run_id or handle.result_run_id, []
        while run_id:
            history = await st.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
            runs.append(history)
            last = history.events[-1]
            run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                      if last.HasField("workflow_execution_continued_as_new_event_attributes") else None)
        for index, history in enumerate(runs):
            path = out / (f"{workflow_id}.json" if len(runs) == 1 else f"{workflow_id}@run{index}.json")
            path.write_text(history.to_json())
            written.append(path)
    return written


async def dump_failed(st: Stage, out: Path) -> None:
    """A failed scenario's orders, for diagnosis, beside (not in) the output directory."""
    where = out.parent / f"{out.name}.failed"
    for workflow_id, handle in st.kept:
        try:
            await handle.terminate("recording failed")
        except RPCError:
            pass  # already closed
    try:
        written = await save_histories(st, where.resolve(), mkdir=True)
    except Exception as error:  # diagnosis only: never hide the scenario's own failure
        print(f"      (histories not saved: {error})")
        return
    print(f"      histories of the failed scenario: {', '.join(str(p) for p in written)}")


async def record_one(name: str, svc: Services, redis: aioredis.Redis, out: Path) -> bool:
    """One scenario on clean services; one that depends on the price path's timing gets a second go."""
    attempts = ATTEMPTS.get(name, 1)
    for attempt in range(1, attempts + 1):
        await redis.flushdb()
        for emulator in svc.emulators.values():
            emulator.reset()
        st = Stage(name, svc, redis)
        started = time.monotonic()
        try:
            await asyncio.wait_for(SCENARIOS[name](st), 120)
            written = await save_histories(st, out)
            print(f"ok    {name} ({time.monotonic() - started:.1f}s): {', '.join(p.name for p in written)}", flush=True)
            return True
        except Exception:  # report it, record the rest
            again = attempt < attempts
            print(f"{'RETRY' if again else 'FAIL '} {name}:\n{traceback.format_exc()}", flush=True)
            await dump_failed(st, out)
    return False


async def record(out: Path, names: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    async with services() as svc:
        redis = aioredis.from_url(svc.redis_url, decode_responses=True)
        try:
            for name in names:
                if not await record_one(name, svc, redis, out):
                    failed.append(name)
        finally:
            await redis.aclose()
    print(f"{len(names) - len(failed)} recorded, {len(failed)} failed{': ' + ' '.join(failed) if failed else ''}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="directory for the history files, e.g. tests/histories/release-0.2")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="record only these scenarios")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.out is None:
        parser.error("--out is required")
    unknown = sorted(set(args.only or []) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios: {' '.join(unknown)}")
    return asyncio.run(record(args.out, args.only or list(SCENARIOS)))


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # temporalio sdk-python issue 300: the time-skipping server can abort finalization
