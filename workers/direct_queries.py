"""A query answered outside a workflow task leaves nothing behind in the worker's cache.

When no workflow task is running, the server sends a query straight to a worker, with the history as
it stands: events after the last completed task included (a signal whose task is still pending, say
on the sticky queue of a worker that crashed). To answer, the SDK runs the workflow on those events,
and keeps the run cached. When the real task for them arrives, the run goes on from that cache: the
workflow has met the events of one workflow task in two activations. Whatever it did between the two
was never sent to the server (a poll timer started, then cancelled), and its commands no longer match
the history: every later replay fails, and the order is stuck (tests/test_query_after_crash.py; seen
in the chaos benchmark as "Timer fired event did not have expected timer id 4, it was 5").

So the worker evicts the run when such a query comes. The eviction is asked before the answer is
sent, so no task can reach the cached run in between; the query is still answered. The next workflow
task replays the history whole, one activation per task, as every replay does. The cost is one
replay per direct query (histories stay under a few hundred events; a query of a run not cached
replays it anyway).

sdk-core marks such a query with the id "legacy_query"; a query sent with a workflow task (after its
events, on a run that is up to date) has its own id and is left alone.
"""
from __future__ import annotations

from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.worker import Worker

DIRECT_QUERY_ID = "legacy_query"  # sdk-core's id for a query dispatched outside a workflow task


def is_direct_query(activation: WorkflowActivation) -> bool:
    return bool(activation.jobs) and all(
        job.HasField("query_workflow") and job.query_workflow.query_id == DIRECT_QUERY_ID
        for job in activation.jobs)


def evict_after_direct_queries(worker: Worker) -> Worker:
    """Wraps the worker's activation handler (an SDK internal, checked by the test named above)."""
    workflows = worker._workflow_worker
    if workflows is None:
        return worker
    handle = workflows._handle_activation

    async def handle_activation(activation: WorkflowActivation) -> None:
        if is_direct_query(activation):
            workflows._bridge_worker().request_workflow_eviction(activation.run_id)
        await handle(activation)

    workflows._handle_activation = handle_activation
    return worker
