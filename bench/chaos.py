"""Chaos: orders flowing in execution mode `direct` (the real ccxt client over HTTP to a Binance and
a Bybit exchange emulator process) while the worker is SIGKILLed at random moments and the Temporal
dev server and Redis are each restarted once; then every order and every fill is accounted for.

    python -m bench.chaos [--orders 1000] [--kills 10] [--rate 20] [--seed S]

Orders alternate between the two venues. Both books are one level deep, and every tenth order is a
market order larger than that level: the venue fills part and ends the rest (Bybit
PartiallyFilledCanceled, Binance EXPIRED), so the order must end with exactly the venue's fills.
Every tenth order rests far from the market; a third of those are amended while the chaos runs
(Bybit natively, Binance by cancel-and-replace), a third cancelled, the rest cancelled at the end.

The emulators (Binance accepts a reused client order id once the first order closed, so a blind
resubmission shows as a duplicate) also lose answers on their own: about 5% of creates are placed
and the connection dropped, 3% placed and answered only after the client gave up, 2% placed and
answered 503. The worker consumes the `signals` stream in-process; a killed consumer's pending signals are
reclaimed after 3 s. Temporal and Redis keep their state in files across their restart (Redis with
an fsync'd append-only file: the platform's Redis must be persistent, it holds the sent marks).
Checks, each must be 0:
  lost                    signals without an order workflow
  duplicate_venue_orders  client order ids placed more than once, or venue orders no workflow owns
  live_venue_orders       venue orders still open once every order is terminal
  not_terminal            orders not terminal after the deadline
  fills_missing           venue fills absent from the `executions` stream
  fills_duplicated        a fill_id more than once on it
  fill_quantity_mismatch  an order's filled quantity differs from the venue's
  replay_failures         orders whose history does not replay against the code that made it
                          (kept in bench/results/chaos-replay/)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import redis.asyncio as aioredis
from temporalio.client import Client, WorkflowHistory, WorkflowQueryFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Replayer

from bench.stack import BenchStack, emit
from oms.events import EXECUTION_FIELD, EXECUTIONS_STREAM, SIGNAL_FIELD
from oms.models import TERMINAL_STATES, OrderSnapshot, client_order_id_for
from workflows.order import OrderWorkflow
from workflows.parent import ParentOrderWorkflow

VENUES = ("binance", "bybit")
SYMBOLS = (("BTC/USDT", "0.001", "30000.00"), ("ETH/USDT", "0.02", "1500.00"), ("SOL/USDT", "0.3", "75.00"))
# A one-level SOL book holds 400 SOL (60,000 USDT): 500 fills 400 and the venue ends the rest.
BEYOND_DEPTH = ("SOL/USDT", "500")
_GENERATION = re.compile(r"-r\d+$")
VENUE_FAULTS = ({"kind": "drop_after_accept", "rate": 0.05}, {"kind": "timeout_after_accept", "rate": 0.03},
                {"kind": "server_error_after", "rate": 0.02})


def chaos_signal(i: int, rng: random.Random) -> dict:
    symbol, quantity, far_below = SYMBOLS[i % 3]
    signal_ = {"signal_id": f"chaos-{i}", "strategy_id": f"s{i % 4}", "symbol": symbol,
               "side": rng.choice(("buy", "sell")), "quantity": quantity, "exchange": VENUES[(i // 3) % 2]}
    if i % 10 == 4:  # beyond the book's depth: partial fills, the rest ended by the venue
        k = i // 10  # per venue, buys and sells alternate so the account's balances hold
        signal_.update(symbol=BEYOND_DEPTH[0], quantity=BEYOND_DEPTH[1], order_type="market",
                       exchange=VENUES[k % 2], side=("buy", "sell")[(k // 2) % 2])
    if i % 10 == 9:  # a resting limit: amended or cancelled mid-run, or cancelled at the end
        signal_.update(order_type="limit", limit_price=far_below, side="buy", exchange=VENUES[(i // 10) % 2])
    return signal_


def mid_run_action(signal_: dict) -> dict | None:
    """What happens to a resting order while the chaos runs: an amend, a cancel, or nothing."""
    if signal_.get("order_type") != "limit":
        return None
    k = int(signal_["signal_id"].rsplit("-", 1)[1]) // 20  # venues alternate with i // 10: each sees every action
    if k % 3 == 0:
        price = (Decimal(signal_["limit_price"]) * Decimal("0.99")).quantize(Decimal("0.01"))
        return {"amend": {"limit_price": str(price), "quantity": str(Decimal(signal_["quantity"]) * 2)}}
    if k % 3 == 1:
        return {"cancel": {"reason": "chaos mid-run cancel"}}
    return None


async def connect(address: str) -> Client:
    for _ in range(60):
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except Exception:
            await asyncio.sleep(0.5)
    raise RuntimeError("Temporal did not come back")


async def supervise(stack: BenchStack, kills: int, duration: float, rng: random.Random, log: list) -> None:
    """Kill the worker `kills` times at random moments; restart Temporal and Redis once each."""
    moments = sorted(rng.uniform(1, duration) for _ in range(kills))
    temporal_at, redis_at = rng.uniform(duration * 0.3, duration * 0.5), rng.uniform(duration * 0.6, duration * 0.8)
    started = time.time()
    events = [(m, "worker") for m in moments] + [(temporal_at, "temporal"), (redis_at, "redis")]
    for at, what in sorted(events):
        await asyncio.sleep(max(0.0, started + at - time.time()))
        if what == "worker":
            stack.kill("worker", signal.SIGKILL)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            stack.start_worker("worker", "--with-consumer")
        elif what == "temporal":
            stack.kill("temporal", signal.SIGTERM)
            await asyncio.sleep(0.5)
            stack.start_temporal()
        else:
            stack.kill("redis", signal.SIGTERM)
            await asyncio.sleep(0.5)
            stack.start_redis()
        log.append((round(time.time() - started, 1), what))


def direct_mode(stack: BenchStack, emulators: dict[str, str]) -> dict:
    execution = stack.settings.execution.model_dump(mode="json")
    execution.update(mode="direct", direct={
        **execution["direct"], "exchanges": list(emulators),
        "accounts": {venue: {"api_key": "emulator-key", "secret": "emulator-secret", "base_url": url,
                             "timeout_ms": 2000, "recv_window_ms": 2000} for venue, url in emulators.items()}})
    return execution


async def act_mid_run(address: str, signals: list[dict], rate: float, log: list) -> None:
    """Amend or cancel resting orders once accepted, through the worker kills and Temporal's restart."""
    client = await connect(address)
    started = time.time()
    for i, signal_ in enumerate(signals):
        action = mid_run_action(signal_)
        if action is None:
            continue
        await asyncio.sleep(max(0.0, started + i / rate + 1.0 - time.time()))
        (name, argument), = action.items()
        order_id = f"order-{signal_['signal_id']}"
        for _ in range(120):  # until accepted (an amend needs a working order) or terminal
            try:
                handle = client.get_workflow_handle(order_id)
                snap = await handle.query("status", result_type=OrderSnapshot)
                if snap.state in TERMINAL_STATES:
                    break
                if snap.state.value in ("accepted", "partially_filled"):
                    await handle.signal(name, argument)
                    log.append((round(time.time() - started, 1), name))
                    break
            except Exception:  # not started yet, Temporal restarting, the worker killed mid-query
                client = await connect(address)
            await asyncio.sleep(0.5)


async def publish(redis: aioredis.Redis, signals: list[dict], rate: float) -> None:
    started = time.time()
    for i, s in enumerate(signals):
        while True:
            try:
                await redis.xadd("signals", {SIGNAL_FIELD: json.dumps(s)})
                break
            except Exception:  # Redis is restarting: the strategy retries its publish
                await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.time()))


async def settle(client: Client, signals: list[dict], deadline_s: float) -> tuple[dict[str, OrderSnapshot], set[str]]:
    """Query every order until all are terminal (cancelling the resting ones) or the deadline."""
    ids = [f"order-{s['signal_id']}" for s in signals]
    resting = [f"order-{s['signal_id']}" for s in signals if s.get("order_type") == "limit"]
    snapshots: dict[str, OrderSnapshot] = {}
    lost: set[str] = set()
    deadline = time.time() + deadline_s
    cancelled_resting = False
    while time.time() < deadline:
        lost.clear()
        for order_id in ids:
            if order_id in snapshots and snapshots[order_id].state in TERMINAL_STATES:
                continue
            try:
                snapshots[order_id] = await client.get_workflow_handle(order_id).query("status", result_type=OrderSnapshot)
            except (RPCError, WorkflowQueryFailedError):  # (a query fails for good if its replay does)
                lost.add(order_id)
        if not cancelled_resting and all(o in snapshots for o in resting):
            for order_id in resting:
                if snapshots[order_id].state in TERMINAL_STATES:
                    continue  # cancelled mid-run already
                try:
                    await client.get_workflow_handle(order_id).signal("cancel", {"reason": "chaos end"})
                except RPCError:  # ended meanwhile
                    pass
            cancelled_resting = True
        if not lost and len(snapshots) == len(ids) and all(s.state in TERMINAL_STATES for s in snapshots.values()):
            break
        await asyncio.sleep(1)
    return snapshots, lost


REPLAY_FAILURES_DIR = Path(__file__).parent / "results" / "chaos-replay"


async def replay_failures(client: Client, order_ids: list[str]) -> dict[str, str]:
    """Every order's history (its latest run) replayed against the code that made it, as a worker
    does after a kill or a cache eviction and as every query of a closed order does: order id ->
    the replay error. A failing history is kept in bench/results/chaos-replay/ for diagnosis."""
    histories: list[WorkflowHistory] = []
    for order_id in order_ids:
        with contextlib.suppress(RPCError):
            histories.append(await client.get_workflow_handle(order_id).fetch_history())

    async def each():
        for history in histories:
            yield history

    failures: dict[str, str] = {}
    replayer = Replayer(workflows=[OrderWorkflow, ParentOrderWorkflow], data_converter=pydantic_data_converter)
    async with replayer.workflow_replay_iterator(each()) as results:
        async for result in results:
            if result.replay_failure is not None:
                failures[result.history.workflow_id] = str(result.replay_failure)[:300]
                REPLAY_FAILURES_DIR.mkdir(parents=True, exist_ok=True)
                (REPLAY_FAILURES_DIR / f"{result.history.workflow_id}.json").write_text(result.history.to_json())
    return failures


async def run(orders: int, kills: int, rate: float, seed: int, deadline_s: float) -> dict:
    rng = random.Random(seed)
    overrides = {"messaging": {"claim_idle_ms": 3000},
                 "orders": {"execution_timeout_ms": 3000, "retry_delay_ms": 50, "rate_limit_orders": 100}}
    with BenchStack(overrides, keep_state=True) as stack:
        emulators = {venue: stack.start_emulator(venue) for venue in VENUES}
        stack.configure({"execution": direct_mode(stack, emulators)})
        for emulator in emulators.values():
            httpx.post(f"{emulator}/_emulator/book", json={"depth_levels": 1}).raise_for_status()
            for fault in VENUE_FAULTS:
                httpx.post(f"{emulator}/_emulator/faults", json={**fault, "endpoints": ["create"]}).raise_for_status()
        stack.start_temporal()
        stack.start_redis()
        stack.start_worker("worker", "--with-consumer")
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True,
                                  retry_on_error=[ConnectionError])
        signals = [chaos_signal(i, rng) for i in range(orders)]
        log: list = []
        started = time.time()
        chaos = asyncio.create_task(supervise(stack, kills, orders / rate, rng, log))
        actions: list = []
        acting = asyncio.create_task(act_mid_run(stack.settings.temporal.address, signals, rate, actions))
        await publish(redis, signals, rate)
        await chaos  # the venue keeps losing answers until the end: retries must cope too
        await acting
        client = await connect(stack.settings.temporal.address)
        snapshots, lost = await settle(client, signals, deadline_s)
        nondeterministic = await replay_failures(client, [f"order-{s['signal_id']}" for s in signals])
        published = Counter(json.loads(f[EXECUTION_FIELD])["fill_id"] for _, f in await redis.xrange(EXECUTIONS_STREAM))
        await redis.aclose()
        venue_orders = [o for url in emulators.values() for o in httpx.get(f"{url}/_emulator/orders").json()]
        venue_stats = {venue: httpx.get(f"{url}/_emulator/stats").json() for venue, url in emulators.items()}
    placed = Counter(o["client_order_id"] for o in venue_orders)
    # An amend by cancel-and-replace places generations `<client id>-r<n>`: all belong to one order.
    filled_at_venue: dict[str, Decimal] = {}
    for o in venue_orders:
        base = _GENERATION.sub("", o["client_order_id"])
        filled_at_venue[base] = filled_at_venue.get(base, Decimal(0)) + Decimal(o["filled"])
    owned = {client_order_id_for(s.order_id) for s in snapshots.values()}
    venue_fill_ids = {f"{o['client_order_id']}:{f['trade_id']}" for o in venue_orders for f in o["fills"]}
    mismatched = [s.order_id for s in snapshots.values()
                  if filled_at_venue.get(client_order_id_for(s.order_id), Decimal(0)) != s.filled_quantity]
    states = Counter(s.state.value for s in snapshots.values())
    beyond = [s for s in snapshots.values() if s.quantity == Decimal(BEYOND_DEPTH[1])]
    return {
        "benchmark": "chaos",
        "venue": "direct: ccxt -> Binance and Bybit emulators, one-level books (5% dropped, 3% late, 2% 503 after accept)",
        "orders": orders, "kills": sum(1 for _, what in log if what == "worker"),
        "temporal_restarts": sum(1 for _, what in log if what == "temporal"),
        "redis_restarts": sum(1 for _, what in log if what == "redis"),
        "lost": len(lost),
        "duplicate_venue_orders": sum(n - 1 for n in placed.values())
        + sum(1 for cid in placed if _GENERATION.sub("", cid) not in owned),
        "live_venue_orders": sum(1 for o in venue_orders if o["status"] in ("new", "partially_filled")),
        "not_terminal": sum(1 for s in snapshots.values() if s.state not in TERMINAL_STATES),
        "fills_missing": len(venue_fill_ids - set(published)),
        "fills_duplicated": sum(1 for n in published.values() if n > 1),
        "fill_quantity_mismatch": len(mismatched),
        "replay_failures": len(nondeterministic), "replay_errors": nondeterministic,
        "states": dict(states), "venue_orders": len(venue_orders), "fills": len(published),
        "by_venue": dict(Counter(s.exchange for s in snapshots.values())),
        "partial_then_ended": sum(1 for s in beyond if 0 < s.filled_quantity < s.quantity),
        "beyond_depth_states": dict(Counter(s.state.value for s in beyond)),
        "rejections": dict(Counter(s.reason for s in snapshots.values() if s.state.value == "rejected")),
        "amends": sum(1 for _, what in actions if what == "amend"),
        "amended_by_venue": dict(Counter(s.exchange for s in snapshots.values()
                                         if any(t.state.value == "pending_amend" for t in s.transitions))),
        "amended": sum(1 for s in snapshots.values() if any(t.state.value == "pending_amend" for t in s.transitions)),
        "mid_run_cancels": sum(1 for _, what in actions if what == "cancel"),
        "venue_faults_fired": {v: st.get("faults_fired") for v, st in venue_stats.items()},
        "venue_requests": {v: st.get("by_class") for v, st in venue_stats.items()},
        "orders_through_unknown": sum(1 for s in snapshots.values() if any(t.state.value == "unknown" for t in s.transitions)),
        "seconds": round(time.time() - started, 1), "events": log,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20, help="signals per second")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--deadline", type=float, default=180, help="seconds for every order to be terminal")
    args = parser.parse_args()
    result = asyncio.run(run(args.orders, args.kills, args.rate, args.seed, args.deadline))
    result["seed"] = args.seed
    emit(result)


if __name__ == "__main__":
    main()
