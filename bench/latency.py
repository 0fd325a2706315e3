"""Signal-to-venue latency: a signal published on the `signals` stream to the order stored by the
simulated venue, at a steady offered rate, against a bare asyncio baseline in the same run.

    python -m bench.latency [--orders 1000] [--rate 20] [--mode simulation|direct]

Durable path: one `tom worker --with-consumer` process (the consumer shares the worker's client, so
workflow starts are eager and the first workflow task runs in the same process; validation and
submission are local activities). Baseline: the same parsing, order generation, validation and
venue call (SimulatedVenue.submit on the same Redis) in a plain asyncio loop, no Temporal.
Latency = SimOrder.created_at (set by the venue when it stores the order) minus the publish time;
both clocks are this machine's. The venue's artificial delay (delay_ms) is 0 in both.

--mode direct: the same measurement through ccxt against a `tom exchange-emulator` (Binance)
process: latency = the emulator's created time of the order minus the publish time; baseline = the
bare ccxt `create_order` round trip against the same emulator from this process. The durable path
is split into stages: to_workflow (publish -> the order's first workflow task: consumer, eager
start), prepare (-> venue_submit starts its venue work, by the adapter's sent mark: the prepare
local activity with routing, market, quote and the daily slot, then the submit's scheduling), gate
and venue call (-> the venue stored it: the shared gate's admission and the HTTP request), record
(-> the workflow applied the answer).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import redis.asyncio as aioredis

from activities.venues.ccxt_exchange import sent_mark_key
from activities.venues.simulated import SimulatedVenue
from bench.stack import BenchStack, emit, percentile, workflow_threads_override
from oms.events import SIGNAL_FIELD
from oms.generation import generate_order
from oms.pricing import VenuePrices
from oms.validation import validate_order
from oms.venue import VenueOrderRequest
from workers.intake import parse_signal

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
QUANTITIES = ("0.001", "0.01", "0.2")  # 30-60 USDT each


def signal_payload(prefix: str, i: int) -> str:
    return json.dumps({"signal_id": f"{prefix}-{i}", "strategy_id": "bench", "symbol": SYMBOLS[i % 3],
                       "side": "buy" if i % 2 else "sell", "quantity": QUANTITIES[i % 3]})


async def venue_created_at(redis: aioredis.Redis, client_order_id: str) -> float | None:
    raw = await redis.get(f"sim:simulation:order:{client_order_id}")
    return datetime.fromisoformat(json.loads(raw)["created_at"]).timestamp() if raw else None


async def durable(stack: BenchStack, redis: aioredis.Redis, orders: int, rate: float, prefix: str) -> list[float]:
    sent: dict[str, float] = {}
    for i in range(orders):
        payload = signal_payload(prefix, i)
        sent[f"order-{prefix}-{i}"] = time.time()
        await redis.xadd("signals", {SIGNAL_FIELD: payload})
        await asyncio.sleep(max(0.0, sent[f"order-{prefix}-{i}"] + 1 / rate - time.time()))
    deadline = time.time() + 60
    latencies: dict[str, float] = {}
    while len(latencies) < orders and time.time() < deadline:
        for cid, at in sent.items():
            if cid not in latencies and (created := await venue_created_at(redis, cid)) is not None:
                latencies[cid] = (created - at) * 1000
        await asyncio.sleep(0.2)
    return list(latencies.values())


async def baseline(stack: BenchStack, redis: aioredis.Redis, orders: int, rate: float) -> list[float]:
    settings = stack.settings
    venue = SimulatedVenue(redis, settings.execution.simulation)
    latencies: list[float] = []

    async def one(i: int, sent: float) -> None:
        signal = parse_signal(signal_payload("base", i), settings)
        market = await venue.market(signal.symbol)
        quote = await venue.quote(signal.symbol)
        instruction = generate_order(signal, settings.orders, "simulation", market, quote.mid, None)
        limits = settings.account_limits
        if market.quote != limits.currency:
            raise RuntimeError(f"baseline: {signal.symbol} is quoted in {market.quote}, the account in {limits.currency}")
        prices = VenuePrices(account_currency=limits.currency, bid=quote.bid, ask=quote.ask, conversion_price=Decimal(1))
        denial = validate_order(instruction, signal.side, market, limits, datetime.now(timezone.utc), prices)
        if denial is not None:
            raise RuntimeError(f"baseline order denied: {denial}")
        cid = f"base-{uuid.uuid4().hex[:12]}"
        await venue.submit(VenueOrderRequest(exchange="simulation", client_order_id=cid, symbol=signal.symbol,
                                             side=signal.side, order_type=instruction.order_type,
                                             quantity=instruction.quantity))
        latencies.append((await venue_created_at(redis, cid) - sent) * 1000)

    tasks = []
    for i in range(orders):
        sent = time.time()
        tasks.append(asyncio.create_task(one(i, sent)))
        await asyncio.sleep(max(0.0, sent + 1 / rate - time.time()))
    await asyncio.gather(*tasks)
    return latencies


async def emulator_created(url: str) -> dict[str, tuple[float, str]]:
    """client order id -> (created time s, status) of every order the emulator holds."""
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        orders = (await http.get(f"{url}/_emulator/orders")).json()
    return {o["client_order_id"]: (o["created_ms"] / 1000, o["status"]) for o in orders}


async def transitions_at(redis: aioredis.Redis, order_ids: set[str]) -> dict[str, dict[str, float]]:
    """order id -> {state: first time it was recorded} from the order_events stream."""
    from oms.events import EVENT_FIELD, ORDER_EVENTS_STREAM

    out: dict[str, dict[str, float]] = {}
    for _, fields in await redis.xrange(ORDER_EVENTS_STREAM):
        event = json.loads(fields[EVENT_FIELD])
        if event["order_id"] in order_ids:
            for t in event["snapshot"]["transitions"]:
                out.setdefault(event["order_id"], {}).setdefault(t["state"], datetime.fromisoformat(t["at"]).timestamp())
    return out


async def direct_durable(url: str, redis: aioredis.Redis, orders: int, rate: float, prefix: str) -> dict:
    sent: dict[str, float] = {}
    for i in range(orders):
        order_id = f"order-{prefix}-{i}"
        sent[order_id] = time.time()
        await redis.xadd("signals", {SIGNAL_FIELD: signal_payload(prefix, i)})
        await asyncio.sleep(max(0.0, sent[order_id] + 1 / rate - time.time()))
    deadline, created = time.time() + 60, {}
    while time.time() < deadline:
        created = {cid: at for cid, (at, _) in (await emulator_created(url)).items() if cid in sent}
        if len(created) == orders:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # the last answers recorded
    seen = await transitions_at(redis, set(created))
    # The adapter's sent mark (set as venue_submit starts its venue work) splits the workflow's
    # part from the venue call's. A transition's time is workflow.now(): the start of the workflow
    # task (or local-activity answer) that made it, so `created` marks the order's first task.
    sent_marks = await redis.mget([sent_mark_key("binance", "default", cid) for cid in created])
    stages: dict[str, list[float]] = {"to_workflow": [], "prepare": [], "gate_and_venue_call": [], "record": []}
    for (order_id, at), mark in zip(created.items(), sent_marks):
        marks = seen.get(order_id, {})
        started, answered = marks.get("created"), marks.get("accepted") or marks.get("filled")
        if started is not None and answered is not None and mark is not None:
            submitting = int(mark) / 1000
            stages["to_workflow"].append((started - sent[order_id]) * 1000)
            stages["prepare"].append((submitting - started) * 1000)
            stages["gate_and_venue_call"].append((at - submitting) * 1000)
            stages["record"].append((answered - at) * 1000)
    return {"latencies": [(at - sent[cid]) * 1000 for cid, at in created.items()], "stages": stages}


async def bare_ccxt(url: str, orders: int, rate: float) -> list[float]:
    """The bare venue call: ccxt create_order against the same emulator, one at the offered rate."""
    import ccxt.async_support as ccxt_async

    exchange = ccxt_async.binance({"apiKey": "emulator-key", "secret": "emulator-secret", "enableRateLimit": False,
                                   "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                                               "fetchMargins": False}})
    for key in ("public", "private"):
        exchange.urls["api"][key] = f"{url}/api/v3"
    try:
        await exchange.load_markets()
        out = []
        for i in range(orders):
            started = time.time()
            await exchange.create_order(SYMBOLS[i % 3], "market", "buy" if i % 2 else "sell",
                                        float(QUANTITIES[i % 3]), None, {"newClientOrderId": f"bare-{i}"})
            out.append((time.time() - started) * 1000)
            await asyncio.sleep(max(0.0, started + 1 / rate - time.time()))
        return out
    finally:
        await exchange.close()


async def run_direct(orders: int, rate: float, workflow_threads: int | None = None) -> dict:
    with BenchStack(workflow_threads_override(workflow_threads)) as stack:
        stack.start_temporal()
        stack.start_redis()
        url = stack.start_emulator("binance")
        execution = stack.settings.execution.model_dump(mode="json")
        execution.update(mode="direct", direct={**execution["direct"], "exchanges": ["binance"], "accounts": {
            "binance": {"api_key": "emulator-key", "secret": "emulator-secret", "base_url": url}}})
        stack.configure({"execution": execution})
        stack.start_worker("worker", "--with-consumer")
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True)
        try:
            await direct_durable(url, redis, 30, 10, "warmup")
            bare = await bare_ccxt(url, min(orders, 300), rate)
            durable_run = await direct_durable(url, redis, orders, rate, "run")
        finally:
            await redis.aclose()
    lat, stages = durable_run["latencies"], durable_run["stages"]
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    b50, b99 = percentile(bare, 0.5), percentile(bare, 0.99)
    return {
        "benchmark": "latency", "mode": "direct",
        "entry": "redis stream -> tom worker --with-consumer -> ccxt -> tom exchange-emulator (binance)",
        "orders": orders, "measured": len(lat), "offered_rate_per_s": rate,
        "p50_ms": p50, "p90_ms": percentile(lat, 0.9), "p99_ms": p99, "max_ms": percentile(lat, 1.0),
        "bare_ccxt_create_order_p50_ms": b50, "bare_ccxt_create_order_p99_ms": b99,
        "stages_p50_ms": {name: percentile(v, 0.5) for name, v in stages.items()},
        "stages_p99_ms": {name: percentile(v, 0.99) for name, v in stages.items()},
        "targets": {"p50_ms": 20, "p99_ms": 40},
    }


async def run(orders: int, rate: float, workflow_threads: int | None = None) -> dict:
    with BenchStack(workflow_threads_override(workflow_threads)) as stack:
        stack_sandbox = stack.settings.temporal.sandbox
        stack.start_temporal()
        stack.start_redis()
        stack.start_worker("worker", "--with-consumer")
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True)
        try:
            await durable(stack, redis, 50, 20, "warmup")  # imports, connections, sandbox caches
            base = await baseline(stack, redis, orders, rate)
            lat = await durable(stack, redis, orders, rate, "run")
            worker = stack.stats("worker")
        finally:
            await redis.aclose()
    p50, p99, b50, b99 = percentile(lat, 0.5), percentile(lat, 0.99), percentile(base, 0.5), percentile(base, 0.99)
    return {
        "benchmark": "latency", "entry": "redis stream -> tom worker --with-consumer (eager start, local activities)",
        "orders": orders, "measured": len(lat), "offered_rate_per_s": rate,
        "p50_ms": p50, "p90_ms": percentile(lat, 0.9), "p99_ms": p99, "max_ms": percentile(lat, 1.0),
        "baseline_p50_ms": b50, "baseline_p90_ms": percentile(base, 0.9), "baseline_p99_ms": b99,
        "overhead_ratio_p50": round(p50 / b50, 2) if p50 and b50 else None,
        "overhead_ratio_p99": round(p99 / b99, 2) if p99 and b99 else None,
        "worker_rss_mb": worker["rss_mb"], "workflow_sandbox": stack_sandbox, "targets": {"p50_ms": 15, "p99_ms": 50},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.latency")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=None,
                        help="signals per second, steady (well inside capacity: see bench.throughput); "
                             "default 20 (simulation), 5 (direct)")
    parser.add_argument("--mode", choices=["simulation", "direct"], default="simulation")
    parser.add_argument("--workflow-threads", type=int, default=None,
                        help="temporal.workflow_threads for the worker (default: the config's, 0 = inline)")
    args = parser.parse_args()
    if args.mode == "direct":
        emit(asyncio.run(run_direct(args.orders, args.rate or 5.0, args.workflow_threads)))
    else:
        emit(asyncio.run(run(args.orders, args.rate or 20.0, args.workflow_threads)))


if __name__ == "__main__":
    main()
