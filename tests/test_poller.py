"""The per-account poller: one venue call per round for all open orders, changes signalled."""
import asyncio

import pytest

from activities.venue_sim import SimulatedVenue
from activities.venues import VenueRegistry
from oms.models import OrderSnapshot, OrderState
from oms.venue import VenueOrderRef
from tests.helpers import make_signal, start_order
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
