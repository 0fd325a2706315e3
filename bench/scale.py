"""Scale: N open GTC limit orders resting on the venue (default 10,000).

    python -m bench.scale [--orders 10000] [--window 60]

Measures, with one worker process: its memory with all orders open, the venue requests per second
spent on fill tracking over a steady window (the simulated venue counts every call in Redis), the
largest workflow history among a sample, and the time to cancel all of them (a `cancel` signal
each, until every workflow is closed). Orders rest far below the market so none fills.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.stack import BenchStack, emit
from oms.events import SIGNAL_FIELD
from workflows.order import HISTORY_BOUND, POLL_MAX

OPEN_SET = "sim:simulation:open:default"


def resting_signal(i: int) -> str:
    return json.dumps({"signal_id": f"scale-{i}", "strategy_id": "bench", "symbol": "ETH/USDT", "side": "buy",
                       "quantity": "0.01", "order_type": "limit", "limit_price": "1500.00"})


async def wait_until(predicate, timeout: float, every: float = 1.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(every)
    return False


async def run(orders: int, window: float) -> dict:
    with BenchStack() as stack:
        stack.start_temporal()
        stack.start_redis()
        stack.start_worker("worker", "--with-consumer")
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True)
        client = await Client.connect(stack.settings.temporal.address, data_converter=pydantic_data_converter)
        try:
            started = time.time()
            for chunk in range(0, orders, 500):
                async with redis.pipeline(transaction=False) as pipe:
                    for i in range(chunk, min(chunk + 500, orders)):
                        pipe.xadd("signals", {SIGNAL_FIELD: resting_signal(i)})
                    await pipe.execute()

            async def all_resting() -> bool:
                return await redis.scard(OPEN_SET) >= orders

            placed = await wait_until(all_resting, timeout=max(300, orders / 10))
            placement_s = time.time() - started
            open_orders = await redis.scard(OPEN_SET)
            await asyncio.sleep(5)
            before, t0 = int(await redis.get("sim:requests") or 0), time.time()
            await asyncio.sleep(window)
            requests_per_s = (int(await redis.get("sim:requests") or 0) - before) / (time.time() - t0)
            worker = stack.stats("worker")
            sample = [f"order-scale-{i}" for i in range(0, orders, max(1, orders // 25))]
            lengths = [(await client.get_workflow_handle(w).describe()).raw_description.workflow_execution_info
                       .history_length for w in sample]

            cancel_started = time.time()
            semaphore = asyncio.Semaphore(200)

            async def cancel(i: int) -> None:
                async with semaphore:
                    await client.get_workflow_handle(f"order-scale-{i}").signal("cancel", {"reason": "bench"})

            await asyncio.gather(*(cancel(i) for i in range(orders)))

            async def all_closed() -> bool:
                return (await client.count_workflows("WorkflowType = 'OrderWorkflow' AND ExecutionStatus = 'Running'")).count == 0

            closed = await wait_until(all_closed, timeout=max(300, orders / 10), every=0.5)
            cancel_all_s = time.time() - cancel_started
        finally:
            await redis.aclose()
    limit = stack.settings.orders.rate_limit_orders * 1000 / stack.settings.orders.rate_limit_window_ms
    return {
        "benchmark": "scale", "orders": orders, "open_orders": open_orders, "all_placed": placed,
        "placement_s": round(placement_s, 1), "worker_rss_mb": worker["rss_mb"],
        "venue_requests_per_s": round(requests_per_s, 2), "venue_rate_limit_per_s": limit,
        "tracking_window_s": window,
        # Per-order fallback polls (only matter when the poller is down) start 2.5-7.5 min after
        # placement and back off to 30 min: in steady state about orders / 1800 s more.
        "fallback_polls_per_s_steady_estimate": round(orders / POLL_MAX.total_seconds(), 2), "max_history_events": max(lengths), "history_bound": HISTORY_BOUND,
        "cancel_all_s": round(cancel_all_s, 1), "all_cancelled": closed,
        "targets": {"worker_rss_mb": 1024, "venue_requests_per_s": limit},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=60, help="seconds of steady fill tracking measured")
    args = parser.parse_args()
    emit(asyncio.run(run(args.orders, args.window)))


if __name__ == "__main__":
    main()
