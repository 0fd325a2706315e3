"""Routing quality: the smart router against the best single venue, on the same books in the same run.

    python -m bench.routing [--sizes 12] [--stack-orders 4]

Two `tom exchange-emulator` processes (Binance and Bybit wire protocols) with different taker fees
and depth; the real ccxt client fetches their books through the shared gate (Redis), and the router
(`activities/routing.py` -> `oms/routing.py`) plans orders of growing size, both sides, from a
fraction of one venue's top level to beyond what one venue holds within the collar. For each order:
- worse: the plan's all-in price is worse than some eligible venue's alone (walked independently on
  the same books) - must be 0;
- saved bps: (best single venue's all-in - the plan's) against the best single venue, for orders
  beyond one venue's top level that some venue can fill alone (the others are counted as
  `split_because_no_single_venue`).
Then a few orders go through the real stack (a `tom worker` process, OrderWorkflow, the emulators):
each one-venue order must end filled on the venue its plan named.

Then `bench/twap_schedule.py` on its own stack: `schedule_error_ms_p99` (TWAP slice placement
against its schedule, target < 250 ms), its details under `twap_schedule` (`--twap-slices 0` skips it).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import uuid
from decimal import Decimal

import httpx
import redis.asyncio as aioredis

from activities.routing import RoutingService
from bench.stack import BenchStack, emit
from oms.models import OrderSnapshot, OrderState, Side, Signal
from oms.routing import walk
from workers.worker import build_registry

SYMBOL = "SOL/USDT"
VENUES = {  # name -> (taker fee, book levels): the cheaper venue is the shallower one
    "binance": (0.0004, 10),
    "bybit": (0.00035, 4),
}


def _better_or_equal(side: Side, a: Decimal, b: Decimal) -> bool:
    return a <= b if side == Side.BUY else a >= b


async def plan_orders(service: RoutingService, sizes: int) -> dict:
    book = await service._cached_book("binance", SYMBOL)
    level = book.asks[0].quantity  # one level of the simulated book (the same size on both venues)
    step = book.market.amount_step
    quantities = [((level * Decimal(f)) / step).to_integral_value() * step
                  for f in [Decimal("0.25") * Decimal("1.6") ** i for i in range(sizes)]]
    worse, saved, no_single, splits, orders = 0, [], 0, 0, 0
    for side in (Side.BUY, Side.SELL):
        for quantity in quantities:
            signal = Signal(signal_id=f"b-{uuid.uuid4().hex[:8]}", strategy_id="bench", symbol=SYMBOL,
                            side=side, quantity=quantity)
            plan = await service.plan(signal)
            books = [await service._venue_book(name, SYMBOL) for name in VENUES]
            orders += 1
            if not plan.legs:
                continue
            splits += plan.is_split
            per_venue: dict[str, Decimal] = {}
            for leg in plan.legs:
                per_venue[leg.exchange] = per_venue.get(leg.exchange, Decimal(0)) + leg.quantity
            cost = sum((walk(side, next(b for b in books if b.exchange == name), q, None).all_in * q
                        for name, q in per_venue.items()), Decimal(0))
            price = cost / quantity
            collar = service._collar(signal, tuple(books))
            singles = [w.all_in for b in books if b.eligible
                       for w in [walk(side, b, quantity, collar)] if w.filled == quantity]
            if any(not _better_or_equal(side, price, single) for single in singles):
                worse += 1
            if not singles:
                no_single += 1
            elif quantity > level:
                best = min(singles) if side == Side.BUY else max(singles)
                gain = (best - price) if side == Side.BUY else (price - best)
                saved.append(float(gain / best * 10_000))
    return {"orders": orders, "split_orders": splits, "worse_than_best_single_venue": worse,
            "saved_bps_vs_best_single_venue_median": round(statistics.median(saved), 3) if saved else None,
            "saved_bps_vs_best_single_venue_max": round(max(saved), 3) if saved else None,
            "orders_beyond_top_level_with_single_venue": len(saved),
            "split_because_no_single_venue": no_single, "level_quantity": str(level)}


async def stack_orders(stack: BenchStack, service: RoutingService, count: int) -> dict:
    """One-venue orders through a `tom worker` process: each must fill on the venue its plan named."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    client = await Client.connect(stack.settings.temporal.address, data_converter=pydantic_data_converter)
    results = {"stack_orders": 0, "stack_orders_filled": 0, "stack_orders_on_planned_venue": 0}
    for i in range(count):
        signal = Signal(signal_id=f"bench-route-{uuid.uuid4().hex[:8]}", strategy_id="bench", symbol=SYMBOL,
                        side=Side.BUY if i % 2 == 0 else Side.SELL, quantity=Decimal("2"))
        plan = await service.plan(signal)
        handle = await client.start_workflow("OrderWorkflow", signal, id=signal.workflow_id,
                                             task_queue=stack.settings.temporal.task_queue, result_type=OrderSnapshot)
        final = await asyncio.wait_for(handle.result(), 60)
        results["stack_orders"] += 1
        results["stack_orders_filled"] += final.state == OrderState.FILLED
        results["stack_orders_on_planned_venue"] += bool(plan.legs) and final.exchange == plan.legs[0].exchange
    return results


async def run(sizes: int, stack_count: int) -> dict:
    with BenchStack() as stack:
        stack.start_redis()
        if stack_count:
            stack.start_temporal()
        urls = {name: stack.start_emulator(name) for name in VENUES}
        for name, (fee, levels) in VENUES.items():
            httpx.post(f"{urls[name]}/_emulator/book", json={"depth_levels": levels, "taker_fee": fee}, timeout=10
                       ).raise_for_status()
        execution = stack.settings.execution.model_dump(mode="json")
        execution.update(mode="direct", direct={**execution["direct"], "exchanges": list(VENUES), "accounts": {
            name: {"api_key": "emulator-key", "secret": "emulator-secret", "base_url": urls[name], "taker_fee": fee}
            for name, (fee, _) in VENUES.items()}})
        stack.configure({"execution": execution, "orders": {**stack.settings.orders.model_dump(mode="json"),
                                                            "rate_limit_orders": 1000}})
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True)
        registry = await build_registry(stack.settings, redis)
        try:
            # One snapshot of the books for every plan (the price path moves): router and
            # comparison see the same levels.
            frozen = stack.settings.with_overrides(execution={**execution, "routing_book_ttl_ms": 60_000})
            result = await plan_orders(RoutingService(registry, frozen, redis), sizes)
            service = RoutingService(registry, stack.settings, redis)
            if stack_count:
                stack.start_worker()
                result.update(await stack_orders(stack, service, stack_count))
        finally:
            await registry.close()
            await redis.aclose()
    result["venues"] = {name: {"taker_fee": fee, "depth_levels": levels} for name, (fee, levels) in VENUES.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, default=12, help="order sizes per side (growing by 1.6x)")
    parser.add_argument("--stack-orders", type=int, default=4, help="orders through the real stack")
    parser.add_argument("--twaps", type=int, default=3, help="TWAPs run at once for schedule_error_ms_p99")
    parser.add_argument("--twap-slices", type=int, default=6, help="slices per TWAP (0: no TWAP measure)")
    parser.add_argument("--twap-duration", type=int, default=15, help="seconds each TWAP lasts")
    args = parser.parse_args()
    result = asyncio.run(run(args.sizes, args.stack_orders))
    if args.twap_slices:
        # TWAP slice placement against its schedule (bench/twap_schedule.py, its own stack).
        from bench import twap_schedule

        twap = asyncio.run(twap_schedule.run(args.twaps, args.twap_slices, args.twap_duration))
        result["schedule_error_ms_p99"] = twap["schedule_error_ms_p99"]
        result["twap_schedule"] = {k: v for k, v in twap.items() if k != "benchmark"}
    emit(result)


if __name__ == "__main__":
    main()
