"""The per-account poller: one venue call per round for all open orders, changes signalled."""
import asyncio
import contextlib
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import pytest_asyncio

from activities.venues.simulated import SimulatedVenue
from activities.venues import VenueRegistry
from oms.events import client_order_key
from oms.models import OrderSnapshot, OrderState
from oms.venue import VenueFill, VenueOrderRef, VenueOrderStatus
from tests.helpers import executions, make_signal, start_order
from tests.test_workflow_lifecycle import wait_for_state
from workers.poller import AccountPoller


@pytest.fixture
def fast_settings(fast_settings):
    """The production worker's own poller polls once at start only: this test drives a poller itself."""
    execution = fast_settings.execution.model_dump(mode="json")
    execution["direct"]["poll_interval_ms"] = 600_000
    return fast_settings.with_overrides(execution=execution)


async def test_poller_signals_an_order_cancelled_at_the_venue(temporal_env, order_worker, fast_settings, task_queue,
                                                               redis):
    venue = SimulatedVenue(redis, fast_settings.execution.simulation)
    handles = [await start_order(temporal_env.client, task_queue,
                                 make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
               for _ in range(5)]
    snaps = [await wait_for_state(handle, {OrderState.ACCEPTED}) for handle in handles]
    poller = AccountPoller(temporal_env.client, redis, VenueRegistry({"simulation": venue}), "simulation",
                           interval_s=0.2)
    await poller.poll_once()  # the first round learns the open orders (and may signal them)
    requests_before = int(await redis.get("sim:requests"))
    # Someone cancels one order directly on the venue (an operator, the exchange's risk engine).
    await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=snaps[0].client_order_id,
                                     symbol="ETH/USDT"))
    sent = await poller.poll_once()
    assert sent == 1
    final = await asyncio.wait_for(handles[0].result(), 10)
    assert final.state == OrderState.CANCELLED and final.reason == "cancelled at the venue"
    events = [e async for e in handles[0].fetch_history_events()]
    assert any(e.HasField("workflow_execution_signaled_event_attributes")
               and e.workflow_execution_signaled_event_attributes.signal_name == "venue_update" for e in events)
    # One round costs one listing call plus one fetch per order that left the open set,
    # however many orders are open.
    assert int(await redis.get("sim:requests")) - requests_before <= 3
    for handle in handles[1:]:
        await handle.signal("cancel", {})
    await asyncio.gather(*(h.result() for h in handles[1:]))


async def test_an_order_listed_before_its_workflow_recorded_it_is_signalled_on_the_next_round(
        temporal_env, order_worker, fast_settings, task_queue, redis):
    """The listing and the venue's answer cross: the poller lists an order whose client order id no
    workflow has recorded yet. It is not marked seen, so the next round signals it (marked seen, an
    unchanged order would never be signalled until it changed)."""
    venue = SimulatedVenue(redis, fast_settings.execution.simulation)
    handle = await start_order(temporal_env.client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    snap = await wait_for_state(handle, {OrderState.ACCEPTED})
    mapping = client_order_key(snap.client_order_id)
    order_id = await redis.get(mapping)
    assert order_id == handle.id
    await redis.delete(mapping)  # as it was before the workflow recorded the venue's answer
    poller = AccountPoller(temporal_env.client, redis, VenueRegistry({"simulation": venue}), "simulation")
    await redis.delete(poller._seen_key)
    await poller.poll_once(catch_up=False)
    assert not await redis.hexists(poller._seen_key, snap.client_order_id)
    assert await venue_updates(handle) == 0
    await redis.set(mapping, order_id)  # the workflow's record lands
    await poller.poll_once(catch_up=False)
    assert await redis.hexists(poller._seen_key, snap.client_order_id)
    assert await venue_updates(handle) == 1
    await poller.poll_once(catch_up=False)
    assert await venue_updates(handle) == 1  # seen now, unchanged: not signalled again
    await handle.signal("cancel", {})
    await handle.result()


async def venue_updates(handle) -> int:
    return len([e async for e in handle.fetch_history_events()
                if e.HasField("workflow_execution_signaled_event_attributes")
                and e.workflow_execution_signaled_event_attributes.signal_name == "venue_update"])


async def _accepted(handle) -> OrderSnapshot:
    for _ in range(200):
        snap = await handle.query("status", result_type=OrderSnapshot)
        if snap.state == OrderState.ACCEPTED:
            return snap
        await asyncio.sleep(0.05)
    raise AssertionError(f"order not accepted: {snap.state}")


def _venue_updates(events) -> int:
    return sum(1 for e in events if e.HasField("workflow_execution_signaled_event_attributes")
               and e.workflow_execution_signaled_event_attributes.signal_name == "venue_update")


@pytest_asyncio.fixture
async def bare_worker(temporal_env, fast_settings, redis):
    """The worker without its own poller, which would hold the very lease this test hands over."""
    from workers.worker import build_worker

    async with await build_worker(temporal_env.client, fast_settings, redis) as worker:
        yield worker


async def test_failover_misses_no_fill_the_next_leaseholder_continues_from_the_cursor(
        temporal_env, bare_worker, fast_settings, task_queue, redis, monkeypatch):
    import workers.poller as poller_module

    monkeypatch.setattr(poller_module, "LEASE_S", 1)
    venue = SimulatedVenue(redis, fast_settings.execution.simulation)
    registry = VenueRegistry({"simulation": venue})

    async def trade_at_venue(snap, quantity: str, then_cancel: bool) -> None:
        """The venue fills `quantity` of the resting order (and then cancels the rest, if asked)."""
        def fill(order):
            order.fills.append(VenueFill(trade_id=f"{order.venue_order_id}-x", quantity=Decimal(quantity),
                                         price=Decimal("1000.00"), fee=Decimal("0.01"), fee_currency="USDT",
                                         liquidity="maker", at=datetime.now(timezone.utc)))
            order.status = VenueOrderStatus.FILLED if order.remaining <= 0 else VenueOrderStatus.PARTIALLY_FILLED
            return order

        await venue._update(snap.client_order_id, fill)
        if then_cancel:
            await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=snap.client_order_id,
                                             symbol="ETH/USDT"))

    async def start():
        handle = await start_order(temporal_env.client, task_queue,
                                   make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
        return handle, await _accepted(handle)

    (seen_handle, seen_snap), (other_handle, _) = await start(), await start()
    leader = AccountPoller(temporal_env.client, redis, registry, "simulation", interval_s=0.1, catch_up_s=0.1)
    stop_leader = asyncio.Event()
    leader_task = asyncio.create_task(leader.run(stop_leader))
    for _ in range(100):
        if leader.rounds >= 2:
            break
        await asyncio.sleep(0.05)
    assert leader.rounds >= 2
    leader_task.cancel()  # the leaseholder dies: no release, its lease runs out
    with contextlib.suppress(asyncio.CancelledError):
        await leader_task
    # While nobody polls: an order the dead poller saw open fills at the venue, and an order it never
    # saw opens, fills in part and is cancelled, all between two listings.
    await trade_at_venue(seen_snap, "0.1", then_cancel=False)
    unseen_handle, unseen_snap = await start()
    await trade_at_venue(unseen_snap, "0.04", then_cancel=True)

    follower = AccountPoller(temporal_env.client, redis, registry, "simulation", interval_s=0.1, catch_up_s=0.1)
    # The dead one's lease holds until its TTL runs out (however long the steps above took: on a
    # loaded machine it may be gone already); then the follower takes it over.
    if await redis.pttl("poller:lease:simulation:default") > 1_000:
        assert not await follower._hold_lease()
    stop = asyncio.Event()
    follower_task = asyncio.create_task(follower.run(stop))
    try:
        expected = {seen_handle: (OrderState.FILLED, Decimal("0.1")),
                    unseen_handle: (OrderState.CANCELLED, Decimal("0.04"))}
        for handle, (state, filled) in expected.items():
            final = await asyncio.wait_for(handle.result(), 60)  # the orders' own polls are minutes away
            assert (final.state, final.filled_quantity) == (state, filled), final
            assert _venue_updates([e async for e in handle.fetch_history_events()]) >= 1
            published = [f for f in await executions(redis) if f["order_id"] == final.order_id]
            assert sum((Decimal(f["quantity"]) for f in published), Decimal(0)) == filled  # no fill missed
        assert follower.signals_sent >= 2 and await redis.get("poller:lease:simulation:default") == follower._lease.owner
    finally:
        stop.set()
        await follower_task
    await other_handle.signal("cancel", {})
    await other_handle.result()


async def test_catch_up_lists_orders_closed_since_the_cursor_with_their_venue_status(fast_settings, emulators,
                                                                                    redis):
    from decimal import Decimal

    from activities.venues.ccxt_exchange import build_ccxt_adapters
    from oms.models import OrderType, Side
    from oms.venue import VenueOrderRequest, VenueOrderStatus
    from tests.conftest import direct_settings

    settings = direct_settings(fast_settings, emulators, orders={"rate_limit_orders": 1000})
    for adapter in build_ccxt_adapters(settings, redis):
        try:
            since = int(time.time() * 1000) - 1000
            quote = await adapter.quote("ETH/USDT")
            step = quote.market.price_step
            for cid, price in ((f"cross-{adapter.name}", quote.ask * Decimal("1.01")),
                               (f"rest-{adapter.name}", quote.bid * Decimal("0.97"))):
                await adapter.submit(VenueOrderRequest(
                    exchange=adapter.name, client_order_id=cid, symbol="ETH/USDT", side=Side.BUY,
                    order_type=OrderType.LIMIT, quantity=Decimal("0.01"), limit_price=price // step * step))
            closed = {r.client_order_id: r for r in await adapter.fetch_closed_since("default", since)}
            assert set(closed) == {f"cross-{adapter.name}"}  # the resting one is still open
            report = closed[f"cross-{adapter.name}"]
            assert report.status == VenueOrderStatus.FILLED and report.fills_complete is False
            assert await adapter.fetch_closed_since("default", int(time.time() * 1000) + 60_000) == []
        finally:
            await adapter.close()
