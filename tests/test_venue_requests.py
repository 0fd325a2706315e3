"""Venue requests per open order are bounded and measured: `tom_venue_requests_total` by venue and
kind, counted (in Redis, across workers) for every adapter call that goes through the registry."""
import asyncio
from decimal import Decimal

import httpx

from activities.venues.metering import venue_requests
from activities.venues.simulated import SimulatedVenue
from activities.venues import VenueRegistry
from oms.events import client_order_key
from oms.models import OrderSnapshot, OrderState, OrderType, Side
from oms.venue import VenueOrderRef, VenueOrderRequest
from tests.helpers import make_signal, start_order
from workers.api import Services, create_app
from workers.poller import AccountPoller


async def counts(redis) -> dict[str, int]:
    return {kind: n for (exchange, kind), n in (await venue_requests(redis)).items() if exchange == "simulation"}


async def spent_since(redis, before: dict[str, int]) -> dict[str, int]:
    now = await counts(redis)
    return {kind: n - before.get(kind, 0) for kind, n in now.items() if n != before.get(kind, 0)}


async def test_poller_rounds_cost_the_same_however_many_orders_are_open(temporal_env, fast_settings, redis):
    registry = VenueRegistry({"simulation": SimulatedVenue(redis, fast_settings.execution.simulation)}, redis)
    venue = registry.get("simulation")
    for i in range(20):
        await venue.submit(VenueOrderRequest(exchange="simulation", client_order_id=f"rest-{i}", symbol="ETH/USDT",
                                             side=Side.BUY, order_type=OrderType.LIMIT, quantity=Decimal("0.1"),
                                             limit_price=Decimal("1000.00")))
        # As each order's workflow records it (the poller skips orders no workflow owns).
        await redis.set(client_order_key(f"rest-{i}"), f"order-rest-{i}")
    assert await counts(redis) == {"submit": 20}
    poller = AccountPoller(temporal_env.client, redis, registry, "simulation", catch_up_s=3600)
    await poller.poll_once(catch_up=True)
    before = await counts(redis)
    for _ in range(5):
        await poller.poll_once()
    assert await spent_since(redis, before) == {"list_open": 5}  # 20 open orders: one listing a round
    for i in range(3):
        await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=f"rest-{i}", symbol="ETH/USDT"))
    before = await counts(redis)
    await poller.poll_once(catch_up=True)
    # One fetch per order that left the open set, one listing of each kind.
    assert await spent_since(redis, before) == {"list_open": 1, "fetch": 3, "list_closed": 1}


async def test_an_order_lifecycle_spends_a_bounded_number_of_venue_requests(temporal_env, order_worker, task_queue,
                                                                            fast_settings, redis):
    handle = await start_order(temporal_env.client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    for _ in range(100):
        if (await handle.query("status", result_type=OrderSnapshot)).state == OrderState.ACCEPTED:
            break
        await asyncio.sleep(0.05)
    await handle.signal("cancel", {})
    assert (await handle.result()).state == OrderState.CANCELLED
    spent = await counts(redis)
    assert spent.get("submit") == 1 and spent.get("cancel", 0) >= 1
    assert sum(spent.values()) <= 6, spent
    # The API's /metrics shows the totals of every worker.
    app = create_app(fast_settings, Services(fast_settings, temporal_env.client, redis, None), run_recorder=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        text = (await api.get("/metrics")).text
    assert 'tom_venue_requests_total{exchange="simulation",kind="submit"} 1.0' in text
