"""A query that reaches a new worker while the crashed worker's task is still pending.

The server dispatches such a query straight to a worker, with the history as it stands: events after
the last completed workflow task included. The SDK runs the workflow on them to answer, and keeps the
run cached; when the real task for those events arrives, the run goes on from that cache. The
workflow has then met the events of one workflow task in two activations, and what it did between
them (here a poll timer started, then cancelled) was never sent: its commands no longer match the
history, every later replay fails and the order is stuck. The worker evicts the run after every such
query (workers/direct_queries.py), so the real task replays the history whole."""
import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.worker import Replayer

from oms.models import OrderSnapshot, OrderState
from tests.conftest import stop_process, tom_process
from tests.helpers import make_signal, start_order
from tests.test_workflow_lifecycle import wait_for_state
from temporalio.contrib.pydantic import pydantic_data_converter
from workflows.order import OrderWorkflow
from workflows.parent import ParentOrderWorkflow


async def test_query_answered_between_a_crash_and_the_next_task_keeps_the_order_deterministic(
        temporal_env, stack_settings, redis, tmp_path):
    config = Path(tmp_path / "query.yaml")
    config.write_text(stack_settings.to_yaml())
    client, queue = temporal_env.client, stack_settings.temporal.task_queue
    first = tom_process(config, "worker", "--processes", "1", log_path=tmp_path / "worker-1.log")
    second = None
    try:
        handle = await start_order(client, queue, make_signal(quantity="0.5", order_type="limit",
                                                              limit_price="1000.00"))
        resting = await wait_for_state(handle, {OrderState.ACCEPTED}, timeout=60)
        os.killpg(first.pid, signal.SIGKILL)  # its sticky queue stays assigned until a task times out there
        first.wait(10)
        second = tom_process(config, "worker", "--processes", "1", log_path=tmp_path / "worker-2.log")
        # Sent while no task is pending: the server dispatches it straight to a worker, first to the
        # dead sticky queue (10 s), then to the normal one with the history as it is by then.
        query = asyncio.create_task(handle.query("status", result_type=OrderSnapshot,
                                                 rpc_timeout=timedelta(seconds=40)))
        await asyncio.sleep(3)
        # The poller's kind of report, unchanged: the workflow restarts its poll wait. Its task is
        # scheduled on the dead sticky queue and times out there 10 s later.
        await handle.signal("venue_update", {**resting.model_dump(mode="json", include={"exchange", "symbol"}),
                                             "client_order_id": resting.client_order_id,
                                             "venue_order_id": resting.venue_order_id, "status": "new",
                                             "quantity": "0.5", "limit_price": "1000.00", "filled_quantity": "0",
                                             "fills": [], "fills_complete": True,
                                             "at": resting.updated_at.isoformat()})
        # Still unanswered once the update is in: the history it goes out with holds the update
        # (answered before, it could not have run the workflow on it, and this test proves nothing).
        assert not query.done()
        answered = await query
        assert answered.state == OrderState.ACCEPTED
        await handle.signal("cancel", {"reason": "end of test"})  # same pending task as the update
        final = await asyncio.wait_for(handle.result(), 60)
        assert final.state == OrderState.CANCELLED
    finally:
        if second is not None:
            stop_process(second)
    history = await handle.fetch_history()
    # The case made: both signals reached the worker in one task, the one that replaced the task
    # timed out on the dead sticky queue (else the query came after it, and this test proves nothing).
    kinds = [EventType.Name(e.event_type) for e in history.events]
    timed_out = kinds.index("EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT")
    started = kinds.index("EVENT_TYPE_WORKFLOW_TASK_STARTED", timed_out)
    signals = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events[:started]
               if e.HasField("workflow_execution_signaled_event_attributes")]
    assert signals[:1] == ["venue_update"] and "cancel" in signals, (signals, kinds)
    replayer = Replayer(workflows=[OrderWorkflow, ParentOrderWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
