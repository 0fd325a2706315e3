"""Smart routing on the real stack: two `tom exchange-emulator` processes (Binance, Bybit wire
protocols) with different fees and depth, the real ccxt client through the shared gate, Redis, and
OrderWorkflow on the Temporal dev server.

- the routing service fetches each venue's book once per cache period however many orders ask, reads
  breaker state fresh, and never picks a venue whose all-in cost on the fetched books is worse than
  another eligible venue's;
- an order larger than one venue's depth within the collar is split across both venues: the
  workflow continues as new into ParentOrderWorkflow with the plan (and, where the parent workflow
  is part of the worker, fills more than either venue could alone).
"""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from temporalio.api.enums.v1 import EventType

from activities.routing import RoutingService
from activities.venues.gate import GateLimits, VenueGate
from oms.models import OrderSnapshot, OrderState, Side
from oms.parent import ParentOrderInput
from oms.routing import walk
from tests.conftest import direct_settings
from tests.helpers import executions, make_signal, start_order
from tests.test_direct_execution import direct_worker
from workers.worker import build_registry

S = OrderState
FEES = {"binance": 0.001, "bybit": 0.0002}  # what each emulator charges, and the accounts are configured with


def routed_settings(stack_settings, emulators, **execution):
    """Direct mode on both emulators, each account with its own taker fee, large orders allowed."""
    settings = direct_settings(stack_settings, emulators, ("binance", "bybit"), orders={"rate_limit_orders": 1000})
    data = settings.execution.model_dump(mode="json")
    for name, fee in FEES.items():
        data["direct"]["accounts"][name]["taker_fee"] = fee
        data["direct"]["accounts"][name]["api_key"] = emulators[name].account()["api_key"]
        data["direct"]["accounts"][name]["secret"] = emulators[name].account()["secret"]
    data.update(execution)
    limits = {**settings.account_limits.model_dump(mode="json"), "max_order_value": 1_000_000}
    return settings.with_overrides(execution=data, account_limits=limits)


def shape(emulators, depth_levels: int) -> None:
    for name, fee in FEES.items():
        emulators[name].shape(depth_levels=depth_levels, taker_fee=fee)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_books_cached_per_venue_breaker_read_fresh_and_cheapest_venue_chosen(stack_settings, emulators, redis):
    shape(emulators, 10)
    settings = routed_settings(stack_settings, emulators, routing_book_ttl_ms=400)
    registry, clock = await build_registry(settings, redis), Clock()
    try:
        service = RoutingService(registry, settings, redis, clock=clock)
        signals = [make_signal(symbol="SOL/USDT", quantity="5", side=side) for side in ("buy", "sell") * 5]
        plans = await asyncio.gather(*(service.plan(s) for s in signals))
        assert service.fetches == 2  # ten orders, one book request per venue
        books = {name: await service._cached_book(name, "SOL/USDT") for name in FEES}
        for signal, plan in zip(signals, plans):
            # The cheaper fee wins on identical price paths; and on the fetched books no eligible
            # venue's all-in price is better than the chosen one.
            assert [leg.exchange for leg in plan.legs] == ["bybit"], plan
            assert books["bybit"].taker_fee == Decimal("0.0002") and books["binance"].taker_fee == Decimal("0.001")
            chosen = plan.legs[0].expected_all_in_price
            for book in books.values():
                other = walk(signal.side, book, signal.quantity, None).all_in
                assert (chosen <= other) if signal.side == Side.BUY else (chosen >= other)
        clock.now += 0.5
        await service.plan(signals[0])
        assert service.fetches == 4  # the cache period passed: fetched again

        limits = GateLimits(orders=10, window_ms=1000, weight_per_s=20, failure_threshold=2, open_s=30,
                            max_wait_ms=500, probe_timeout_ms=1000)
        for _ in range(2):
            await VenueGate(redis, "bybit", "default", limits).failed("ExchangeNotAvailable: 503")
        plan = await service.plan(signals[0])  # the cached bybit book is not used: its breaker is open
        assert [leg.exchange for leg in plan.legs] == ["binance"]
        assert any(c.startswith("bybit: circuit breaker open") for c in plan.considered), plan.considered
    finally:
        await registry.close()


async def test_routing_first_and_pinned_orders_are_not_routed(stack_settings, emulators, redis):
    settings = routed_settings(stack_settings, emulators, routing="first")
    registry = await build_registry(settings, redis)
    try:
        service = RoutingService(registry, settings, redis)
        first = await service.plan(make_signal(quantity="0.01"))
        assert first.legs == [] and first.reason == "routing first: binance"
        smart = RoutingService(registry, routed_settings(stack_settings, emulators), redis)
        pinned = await smart.plan(make_signal(quantity="0.01", exchange="binance"))
        assert pinned.legs == [] and pinned.reason == "pinned to binance by the signal"
        assert service.fetches == smart.fetches == 0
    finally:
        await registry.close()


def _parent_registered() -> bool:
    try:
        from workers.worker import build_worker  # noqa: F401
        import workflows.parent  # noqa: F401
    except ImportError:
        return False
    import inspect

    from workers import worker
    return "ParentOrderWorkflow" in inspect.getsource(worker.build_worker)


async def test_order_beyond_one_venues_depth_is_split_across_both_venues(temporal_env, stack_settings, emulators,
                                                                        redis, task_queue):
    shape(emulators, 1)  # one level each: about 400 SOL per venue within any collar
    settings = routed_settings(stack_settings, emulators)
    registry = await build_registry(settings, redis)
    try:
        books = {name: await RoutingService(registry, settings, redis)._cached_book(name, "SOL/USDT") for name in FEES}
    finally:
        await registry.close()
    depth = {name: sum((lv.quantity for lv in book.asks), Decimal(0)) for name, book in books.items()}
    quantity = (max(depth.values()) * Decimal("1.5")).quantize(Decimal("0.001"))
    assert quantity < sum(depth.values())
    client = temporal_env.client
    signal = make_signal(symbol="SOL/USDT", quantity=str(quantity))
    async with direct_worker(client, settings, redis):
        handle = await start_order(client, task_queue, signal)
        first_run = handle.result_run_id
        deadline = asyncio.get_running_loop().time() + 60
        continued = None
        while continued is None:
            assert asyncio.get_running_loop().time() < deadline, "the order did not continue as a parent"
            history = client.get_workflow_handle(signal.workflow_id, run_id=first_run)
            async for event in history.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                    continued = event.workflow_execution_continued_as_new_event_attributes
            await asyncio.sleep(0.1)
        assert continued.workflow_type.name == "ParentOrderWorkflow"
        (parent_input,) = await client.data_converter.decode(continued.input.payloads, [ParentOrderInput])
        plan = parent_input.route
        assert parent_input.signal == signal
        assert {leg.exchange for leg in plan.legs} == {"binance", "bybit"}
        assert sum((leg.quantity for leg in plan.legs), Decimal(0)) == quantity
        assert plan.best_single_venue is None and "no single venue" in plan.reason, plan.reason
        # Each venue's depth within the collar as the router saw it (the book it planned on): less
        # than the order, and each leg within it.
        seen = {line.split(":")[0]: Decimal(line.split(" fills ")[1].split(" of ")[0])
                for line in plan.considered if " fills " in line}
        assert set(seen) == {"binance", "bybit"} and all(d < quantity for d in seen.values()), plan.considered
        assert all(leg.quantity <= seen[leg.exchange] for leg in plan.legs)
        # Nothing reached a venue before the split, and no daily-order slot was spent on it.
        assert all(not e.orders() for e in emulators.values())
        if _parent_registered():
            final = await client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot).result()
            assert final.filled_quantity > max(seen.values())
        else:
            await client.get_workflow_handle(signal.workflow_id).terminate("ParentOrderWorkflow is not on this branch")


async def test_simulated_venues_differ_and_an_unpinned_order_goes_to_the_cheaper(temporal_env, fast_settings, redis,
                                                                                task_queue):
    from workers.intake import servable_exchanges
    from workers.worker import running_worker

    simulation = {**fast_settings.execution.simulation.model_dump(mode="json"),
                  "venues": {"simulation-b": {"taker_fee": 0.0001, "depth_levels": 3, "depth_scale": 0.5}}}
    settings = fast_settings.with_overrides(execution={**fast_settings.execution.model_dump(mode="json"),
                                                       "simulation": simulation})
    assert servable_exchanges(settings) == {"simulation", "simulation-b"}
    async with running_worker(temporal_env.client, settings, redis):
        unpinned = await (await start_order(temporal_env.client, task_queue, make_signal(quantity="0.01"))).result()
        pinned = await (await start_order(temporal_env.client, task_queue,
                                          make_signal(quantity="0.01", exchange="simulation"))).result()
    assert unpinned.state == S.FILLED and unpinned.exchange == "simulation-b", unpinned
    assert unpinned.routing_reason.startswith("simulation-b: best all-in"), unpinned.routing_reason
    assert "taker fee 0.0005" in unpinned.routing_reason and "taker fee 0.0001" in unpinned.routing_reason
    fills = [f for f in await executions(redis) if f["order_id"] == unpinned.order_id]
    assert fills and all(f["venue"] == "simulation-b" for f in fills)
    assert pinned.state == S.FILLED and pinned.exchange == "simulation"
    assert pinned.routing_reason == "pinned to simulation by the signal"
    registry = await build_registry(settings, redis)
    books = {name: await registry.get(name).order_book("ETH/USDT", 20) for name in ("simulation", "simulation-b")}
    assert len(books["simulation"][1]) == 10 and len(books["simulation-b"][1]) == 3  # depth per venue
    ratio = books["simulation-b"][1][0][1] / books["simulation"][1][0][1]  # and what each level holds
    assert abs(ratio - Decimal("0.5")) < Decimal("0.001"), ratio
    resting = await RoutingService(registry, settings, redis).plan(
        make_signal(quantity="0.01", order_type="limit", limit_price="1500.00"))
    assert resting.legs == [] and resting.reason.endswith("(its limit price); sent to simulation (the first rule)")
    await registry.close()


async def test_plan_route_activity_routes_and_refuses_an_impossible_child_cap(fast_settings, redis):
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.routing import RouteRequest, RoutingActivities

    simulation = {**fast_settings.execution.simulation.model_dump(mode="json"),
                  "venues": {"simulation-b": {"taker_fee": 0.0001}}}
    execution = {**fast_settings.execution.model_dump(mode="json"), "simulation": simulation}
    settings = fast_settings.with_overrides(execution=execution)
    registry = await build_registry(settings, redis)
    try:
        activities = RoutingActivities(RoutingService(registry, settings, redis))
        plan = await ActivityEnvironment().run(activities.plan_route, RouteRequest(signal=make_signal(quantity="0.01")))
        assert [(leg.exchange, leg.quantity) for leg in plan.legs] == [("simulation-b", Decimal("0.01"))]
        capped = fast_settings.with_overrides(execution={**execution, "max_child_quantity": {"ETH/USDT": "0.004"}})
        activities = RoutingActivities(RoutingService(registry, capped, redis))
        plan = await ActivityEnvironment().run(activities.plan_route, RouteRequest(signal=make_signal(quantity="0.01")))
        assert [leg.quantity for leg in plan.legs] == [Decimal("0.0034"), Decimal("0.0033"), Decimal("0.0033")]
        assert plan.is_split and {leg.exchange for leg in plan.legs} == {"simulation-b"}
        impossible = fast_settings.with_overrides(execution={**execution, "max_child_quantity": {"simulation-b": "0.00001",
                                                                                                "simulation": "0.00001"}})
        activities = RoutingActivities(RoutingService(registry, impossible, redis))
        with pytest.raises(ApplicationError, match="below the venue minimum") as refused:
            await ActivityEnvironment().run(activities.plan_route, RouteRequest(signal=make_signal(quantity="0.01")))
        assert refused.value.type == "RoutingRefused" and refused.value.non_retryable
    finally:
        await registry.close()
