"""A Temporal cancellation request (the UI's "Request Cancellation", `temporal workflow cancel`,
handle.cancel()) on a real dev server: the order is cancelled at the venue, the workflow completes
(not CANCELED) with the order `cancelled` and its OrderState search attribute current."""
import asyncio

from temporalio.client import WorkflowExecutionStatus

from oms.models import OrderState
from tests.helpers import make_signal, start_order
from tests.test_workflow_lifecycle import venue_orders, wait_for_state


async def test_workflow_cancellation_cancels_the_resting_order_at_the_venue(temporal_env, order_worker, task_queue,
                                                                           redis):
    handle = await start_order(temporal_env.client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    await wait_for_state(handle, {OrderState.ACCEPTED})
    await handle.cancel()
    snap = await asyncio.wait_for(handle.result(), 30)
    assert snap.state == OrderState.CANCELLED and snap.reason == "workflow cancellation requested"
    [venue_order] = await venue_orders(redis, snap.client_order_id)
    assert venue_order["status"] == "cancelled", venue_order
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    assert description.search_attributes["OrderState"] == ["cancelled"]


async def test_workflow_cancellation_before_submission_needs_no_venue(temporal_env, order_worker, task_queue, redis):
    from datetime import datetime, timedelta, timezone

    start_at = datetime.now(timezone.utc) + timedelta(hours=1)
    handle = await start_order(temporal_env.client, task_queue, make_signal(execution={"start_at": start_at.isoformat()}))
    await wait_for_state(handle, {OrderState.VALIDATED})
    await handle.cancel()
    snap = await asyncio.wait_for(handle.result(), 30)
    assert snap.state == OrderState.CANCELLED
    assert await venue_orders(redis, snap.client_order_id) == []
