"""An amend signal and an amend update that reach the workflow in one workflow task.

With the worker stopped, both wait at the server: the signal in the history, the update as a message
for the next task. The new worker meets them in one activation, in the order the server delivers
them; a replay meets them in history order (the update is sequenced after the signal). The test
server delivers the update first, the dev server the signal. The order in which the workflow carries
them out must not depend on which it met first, or the history does not replay and the next worker
to take the order fails its tasks (the model test's seed 20261179 found it on the test server)."""
import asyncio
from decimal import Decimal

from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from oms.models import OrderSnapshot, OrderState
from tests.helpers import make_signal, start_order
from tests.test_replay import replayer
from tests.test_workflow_lifecycle import venue_orders, wait_for_state
from workers.worker import build_worker
from workflows.order import AMENDS_IN_HISTORY_ORDER


async def test_on_the_dev_server(temporal_env, fast_settings, redis, task_queue):
    await amend_signal_and_update_in_one_task(temporal_env.client, fast_settings, redis, task_queue)


async def test_on_the_time_skipping_test_server(time_env, fast_settings, redis, task_queue):
    await amend_signal_and_update_in_one_task(time_env.client, fast_settings, redis, task_queue)


async def uncached_worker(client, settings, redis) -> Worker:
    """The production worker without a workflow cache, as the model test runs it: each task replays
    the history whole (as a restarted worker meets every order), and on the test server no task waits
    on the stopped worker's sticky queue, which that server never times out."""
    return await build_worker(client, settings, redis, max_cached_workflows=0)


async def amend_signal_and_update_in_one_task(client, fast_settings, redis, task_queue):
    """Both amends applied once each, and the history replays."""
    handle = await start_order(client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    async with await uncached_worker(client, fast_settings, redis):
        await wait_for_state(handle, {OrderState.ACCEPTED})
    # No worker: both wait at the server for the same task.
    update = asyncio.create_task(handle.execute_update("amend_order", {"quantity": "0.3"},
                                                       result_type=OrderSnapshot))
    await asyncio.sleep(0.5)
    await handle.signal("amend", {"limit_price": "1001.00"})
    await asyncio.sleep(0.5)
    assert not update.done()
    async with await uncached_worker(client, fast_settings, redis):
        amended = await asyncio.wait_for(update, 60)
        for _ in range(200):
            snap = await handle.query("status", result_type=OrderSnapshot)
            if snap.limit_price == Decimal("1001.00") and snap.quantity == Decimal("0.3"):
                break
            await asyncio.sleep(0.05)
        await handle.signal("cancel", {"reason": "end of test"})
        final = await asyncio.wait_for(handle.result(), 60)

    # Both amends applied, each once, and nothing is left at the venue.
    assert amended.quantity == Decimal("0.3")
    assert (final.state, final.limit_price, final.quantity) == (OrderState.CANCELLED, Decimal("1001.00"),
                                                                Decimal("0.3")), final.reason
    assert [t.state for t in final.transitions].count(OrderState.PENDING_AMEND) == 2
    at_venue = await venue_orders(redis, final.client_order_id)
    assert [(o["status"], o["quantity"]) for o in at_venue] == [("cancelled", "0.3")], at_venue

    history = await handle.fetch_history()
    # The case made: the signal is in the history before the task that accepted the update.
    kinds = [EventType.Name(e.event_type) for e in history.events]
    signalled = next(i for i, e in enumerate(history.events)
                     if e.workflow_execution_signaled_event_attributes.signal_name == "amend")
    accepted = kinds.index("EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    assert "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" not in kinds[signalled:accepted - 1], kinds[signalled:accepted + 1]

    # Met in one task, they were put in one order (the patch that does it is recorded where it acts).
    patches = [e.marker_recorded_event_attributes.SerializeToString() for e in history.events
               if e.marker_recorded_event_attributes.marker_name == "core_patch"]
    assert any(AMENDS_IN_HISTORY_ORDER.encode() in p for p in patches)

    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
