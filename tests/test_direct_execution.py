"""Orders in execution mode `direct`: OrderWorkflow, the real ccxt client over HTTP, and
`tom exchange-emulator` processes speaking the Binance and Bybit wire protocols.

- amend and cancel on both venues (Bybit's native amend, Binance's cancel-and-replace), including a
  cancel that arrives after the order filled;
- lost answers, timeouts after acceptance and a worker SIGKILLed mid-submission: one venue order
  per client order id, every order terminal, every fill counted once;
- two worker processes on one account never exceed the order rate in any window, and a 418 ban
  pauses both until it ends;
- a new order routes around a venue whose circuit breaker is open.
"""
import asyncio
import os
import signal
import time
from collections import Counter
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from activities.venues.gate import GateLimits, VenueGate
from config.settings import load_settings
from oms import venue_model
from oms.markets import simulated_market
from oms.models import OrderSnapshot, OrderState
from tests.conftest import direct_settings, stop_process, tom_process
from tests.emulators import CONFIG
from tests.helpers import executions, local_activity_calls, make_signal, start_order
from tests.test_workflow_lifecycle import wait_for_state
from emulator.traffic import max_in_window
from workers.worker import build_registry, running_worker

S = OrderState
VENUES = ("binance", "bybit")
SIM = load_settings(CONFIG, env={}).execution.simulation  # what the emulator processes price with


@asynccontextmanager
async def direct_worker(client, settings, redis):
    """The production worker (fill pollers included) in this process, its venue adapters talking to
    the emulators over HTTP."""
    registry = await build_registry(settings, redis)
    try:
        async with running_worker(client, settings, redis, registry):
            yield
    finally:
        await registry.close()


def worker_config(settings, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(settings.to_yaml())
    return path


def resting_price(venue: str) -> str:
    return "1500.00"  # ETH/USDT far below the market (~3000): rests


def future_crossing(symbol: str) -> tuple[str, Decimal, float]:
    """(side, limit price, wall time): an order that rests now and that the deterministic price
    path of the venue model crosses a few seconds from now."""
    now = datetime.now(timezone.utc)
    tick = simulated_market(symbol).price_step

    def book(seconds: int) -> tuple[Decimal, Decimal]:
        return venue_model.top_of_book(symbol, now + timedelta(seconds=seconds), SIM)

    soon, later = range(0, 4), range(5, 15)
    lowest_ask_later, lowest_ask_soon = min(book(s)[1] for s in later), min(book(s)[1] for s in soon)
    highest_bid_later, highest_bid_soon = max(book(s)[0] for s in later), max(book(s)[0] for s in soon)
    if lowest_ask_soon - lowest_ask_later >= highest_bid_later - highest_bid_soon:
        price = (lowest_ask_later // tick) * tick + tick
        assert price < lowest_ask_soon, "the price path is too flat right now"
        when = next(s for s in later if book(s)[1] <= price)
        return "buy", price, now.timestamp() + when
    price = (highest_bid_later // tick) * tick
    assert price > highest_bid_soon, "the price path is too flat right now"
    when = next(s for s in later if book(s)[0] >= price)
    return "sell", price, now.timestamp() + when


async def fills_by_order(redis) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for fill in await executions(redis):
        out.setdefault(fill["order_id"], []).append(fill)
    return out


def assert_fills_match_the_venue(finals: list[OrderSnapshot], published: dict[str, list[dict]], venue_orders):
    """Every venue fill published once, under its order; quantities agree three ways."""
    all_ids = [f["fill_id"] for fills in published.values() for f in fills]
    assert len(all_ids) == len(set(all_ids)), "a fill was published twice"
    by_cid: dict[str, list[dict]] = {}
    for order in venue_orders:
        by_cid.setdefault(order["client_order_id"], []).append(order)
    for final in finals:
        venue_fills = {f"{o['client_order_id']}:{t['trade_id']}": Decimal(t["qty"])
                       for cid, orders in by_cid.items() if cid.startswith(final.client_order_id.split("-r")[0])
                       for o in orders for t in o["fills"]}
        mine = {f["fill_id"]: Decimal(f["quantity"]) for f in published.get(final.order_id, [])}
        assert mine == venue_fills, final.order_id
        assert sum(mine.values(), Decimal(0)) == final.filled_quantity


@pytest.mark.parametrize("venue", VENUES)
async def test_amend_and_cancel_on_the_venue_including_cancel_after_fill(venue, temporal_env, stack_settings,
                                                                        emulators, redis, task_queue):
    # The batched poller would see the crossing fill before our cancel: this test wants the race.
    settings = direct_settings(stack_settings, emulators, (venue,), direct={"poll_interval_ms": 600_000})
    client = temporal_env.client
    async with direct_worker(client, settings, redis):
        market = await (await start_order(client, task_queue, make_signal(quantity="0.01", exchange=venue))).result()
        assert market.state == S.FILLED and market.exchange == venue, market.reason

        handle = await start_order(client, task_queue, make_signal(
            quantity="0.02", order_type="limit", limit_price=resting_price(venue), exchange=venue))
        await wait_for_state(handle, {S.ACCEPTED})
        amended = await handle.execute_update("amend_order", {"limit_price": "1490.00"}, result_type=OrderSnapshot)
        assert amended.limit_price == Decimal("1490.00") and amended.state == S.ACCEPTED
        await handle.signal("amend", {"quantity": "0.03"})
        for _ in range(200):
            snap = await handle.query("status", result_type=OrderSnapshot)
            if snap.quantity == Decimal("0.03") and snap.state == S.ACCEPTED:
                break
            await asyncio.sleep(0.05)
        assert snap.quantity == Decimal("0.03"), snap.transitions
        cancelled = await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
        assert cancelled.state == S.CANCELLED

        # A cancel that reaches the venue after the order filled there: the fill stands. The venue
        # fills the resting order when the test says so (a scripted crossing), whatever the load.
        crossing = await start_order(client, task_queue, make_signal(
            quantity="0.01", order_type="limit", limit_price=resting_price(venue), exchange=venue))
        resting = await wait_for_state(crossing, {S.ACCEPTED})
        assert emulators[venue].trade_through(resting.client_order_id)["status"] == "filled"
        await crossing.signal("cancel", {"reason": "too late"})  # filled at the venue, not yet seen
        late = await crossing.result()
        assert late.state == S.FILLED and late.filled_quantity == Decimal("0.01")
        assert [t.state for t in late.transitions][-2:] == [S.PENDING_CANCEL, S.FILLED]

    venue_orders = emulators[venue].orders()
    live = [o for o in venue_orders if o["status"] in ("new", "partially_filled")]
    assert live == []  # never two live orders, none left behind
    if venue == "bybit":  # native amend: one order, amended in place
        assert [o["client_order_id"] for o in venue_orders].count(snap.client_order_id) == 1
        assert Decimal(next(o for o in venue_orders if o["client_order_id"] == snap.client_order_id)["price"]) == Decimal("1490")
    else:  # cancel-and-replace: a new client id per replacement, each cancelled before the next
        replaced = [o for o in venue_orders if o["client_order_id"].startswith(handle.id)]
        assert [o["status"] for o in replaced] == ["cancelled"] * 3 and len({o["client_order_id"] for o in replaced}) == 3
    assert emulators[venue].stats()["duplicate_client_order_ids"] == []
    finals = [market, cancelled, late]
    assert_fills_match_the_venue(finals, await fills_by_order(redis), venue_orders)


async def test_lost_answers_timeouts_and_sigkill_mid_submission(temporal_env, stack_settings, emulators, redis,
                                                                task_queue, tmp_path):
    """Binance: the venue that accepts a reused client id once the first order closed, so any blind
    resubmission would show here as a duplicate."""
    emulator = emulators["binance"]
    settings = direct_settings(stack_settings, emulators, ("binance",),
                               orders={"execution_timeout_ms": 3000, "rate_limit_orders": 100},
                               timeout_ms=1500, recv_window_ms=2000)
    config = worker_config(settings, tmp_path, "direct")
    client = temporal_env.client
    emulator.fault(kind="drop_after_accept", endpoints=["create"], count=2)
    emulator.fault(kind="timeout_after_accept", endpoints=["create"], count=2, delay_ms=60_000)
    worker = tom_process(config, "worker", log_path=tmp_path / "worker-1.log")
    try:
        first = [make_signal(quantity="0.01", symbol=s) for s in ("ETH/USDT", "BTC/USDT") * 3]
        handles = [await start_order(client, task_queue, s) for s in first]
        done = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 90)
        assert [d.state for d in done] == [S.FILLED] * 6, [(d.state, d.reason) for d in done]
        assert sum(1 for d in done if S.UNKNOWN in [t.state for t in d.transitions]) == 4

        # Mid-submission: every create is held 1.5 s before the venue acts; kill the worker meanwhile.
        emulator.fault(kind="slow", endpoints=["create"], rate=1.0, delay_ms=1500)
        second = [make_signal(quantity="0.01") for _ in range(4)]
        second += [make_signal(quantity="0.01", order_type="limit", limit_price="1500.00") for _ in range(2)]
        handles2 = [await start_order(client, task_queue, s) for s in second]
        # Killed while the venue holds at least four of them: a create is counted as held when it
        # arrives (faults_fired), and as a create only once processed, after the hold; the client
        # times out at the hold's end, so waiting for processed creates would race the breaker,
        # which those timeouts can open.
        deadline = time.time() + 60
        while emulator.stats()["faults_fired"].get("slow", 0) < 4:
            assert time.time() < deadline, f"second batch's creates never reached the venue: {emulator.stats()}"
            await asyncio.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        emulator.clear_faults()
        await asyncio.sleep(2)  # the held creates land at the venue after the worker died
        worker = tom_process(config, "worker", log_path=tmp_path / "worker-2.log")
        for h in handles2[4:]:
            await wait_for_state(h, {S.ACCEPTED}, timeout=60)
            await h.signal("cancel", {"reason": "end of test"})
        done2 = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles2)), 90)
    finally:
        stop_process(worker)
    assert [d.state for d in done2] == [S.FILLED] * 4 + [S.CANCELLED] * 2, [(d.state, d.reason) for d in done2]
    venue_orders = emulator.orders()
    counts = Counter(o["client_order_id"] for o in venue_orders)
    finals = done + done2
    assert sorted(counts) == sorted(f.client_order_id for f in finals)
    assert set(counts.values()) == {1} and emulator.stats()["duplicate_client_order_ids"] == []
    assert_fills_match_the_venue(finals, await fills_by_order(redis), venue_orders)


IN_FLIGHT_MS = 1000  # a request admitted before a pause reaches the venue within this, even under load


async def test_two_workers_share_the_order_rate_and_a_ban_pauses_both(temporal_env, stack_settings, emulators,
                                                                      redis, task_queue, tmp_path):
    emulator = emulators["binance"]
    settings = direct_settings(stack_settings, emulators, ("binance",),
                               orders={"rate_limit_orders": 4, "rate_limit_window_ms": 1000})
    config = worker_config(settings, tmp_path, "shared")
    client = temporal_env.client
    workers = [tom_process(config, "worker", "--processes", "1", log_path=tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        burst = [make_signal(quantity="0.01") for _ in range(16)]
        handles = [await start_order(client, task_queue, s) for s in burst]
        done = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 90)
        assert [d.state for d in done] == [S.FILLED] * 16, [(d.state, d.reason) for d in done]
        stats = emulator.stats(window_ms=1000)
        assert stats["orders_placed"] == 16 and stats["max_orders_in_window"] <= 4
        placed_ms = [int(o["created_ms"]) for o in emulator.orders()]
        assert max_in_window(sorted(t / 1000 for t in placed_ms), 1.0) <= 4

        # A 418 ban of 3 s on the next create: both workers stop sending until it ends.
        emulator.fault(kind="ban", endpoints=["create"], ban_s=3, retry_after_s=3)
        after_ban = [make_signal(quantity="0.01") for _ in range(6)]
        started = time.time()
        handles = [await start_order(client, task_queue, s) for s in after_ban]
        done = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 90)
    finally:
        for worker in workers:
            stop_process(worker)
    assert [d.state for d in done] == [S.FILLED] * 6, [(d.state, d.reason) for d in done]
    stats = emulator.stats(window_ms=1000, log=True)
    (ban_start, ban_end), = stats["bans"]
    # Once the first 418 is answered, the worker that got it pauses the account in the shared gate:
    # neither worker admits another request until the ban ends. What the venue still sees during
    # the ban are requests admitted before the pause, already on their way: they arrive at its very
    # start. A worker that kept sending (retries, the poller's rounds every second) would show in
    # the rest of the 3 s ban.
    answered_418 = [at_ms for at_ms, _, status in stats["request_log"] if status == 418]
    assert answered_418 and stats["requests_during_ban"] == len(answered_418) - 1, stats
    late = [at_ms - answered_418[0] for at_ms in answered_418 if at_ms - answered_418[0] > IN_FLIGHT_MS]
    assert late == [], (late, stats)
    new_orders = [o for o in emulator.orders() if o["client_order_id"] in {d.client_order_id for d in done}]
    assert all(int(o["created_ms"]) >= ban_end for o in new_orders)
    assert time.time() - started >= 3
    assert stats["max_orders_in_window"] <= 4 and stats["duplicate_client_order_ids"] == []


async def test_new_orders_route_around_an_open_breaker(temporal_env, stack_settings, emulators, redis, task_queue):
    breaker = {"failure_threshold": 2, "open_seconds": 30, "on_open": "reroute"}
    settings = direct_settings(stack_settings, emulators, ("binance", "bybit"), direct={"circuit_breaker": breaker})
    limits = GateLimits(orders=10, window_ms=1000, weight_per_s=20, failure_threshold=2, open_s=30,
                        max_wait_ms=500, probe_timeout_ms=1000)
    binance_gate = VenueGate(redis, "binance", "default", limits)
    for _ in range(2):
        await binance_gate.failed("ExchangeNotAvailable: 503")  # what the workers saw
    async with direct_worker(temporal_env.client, settings, redis):
        routed = await (await start_order(temporal_env.client, task_queue, make_signal(quantity="0.01"))).result()
        pinned = await start_order(temporal_env.client, task_queue, make_signal(quantity="0.01", exchange="binance"))
        # A worker took the order: its preparation was refused by the open breaker (an attempt in
        # the history), and it now waits out the breaker's delay on a durable timer.
        deadline = asyncio.get_running_loop().time() + 30
        while ("prepare_order", "VenueCircuitOpen") not in await local_activity_calls(pinned):
            assert asyncio.get_running_loop().time() < deadline, "no worker tried to prepare the pinned order"
            await asyncio.sleep(0.05)
        waiting = await pinned.query("status", result_type=OrderSnapshot)
        timers = [e async for e in pinned.fetch_history_events() if e.HasField("timer_started_event_attributes")]
        await pinned.cancel()  # Temporal-level: it would wait out the breaker's 30 s
    assert routed.state == S.FILLED and routed.exchange == "bybit"
    validated = next(t for t in routed.transitions if t.state == S.VALIDATED)
    assert validated.reason == "routed to bybit: the binance circuit breaker is open"
    # Named by the strategy: it is not rerouted; it waits (preparation retries after the breaker's delay).
    assert waiting.state == S.CREATED
    assert timers, "the refused preparation is not waiting on a timer"
    assert emulators["binance"].stats()["by_class"].get("create", 0) == 0
