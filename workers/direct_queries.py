"""A query answered outside a workflow task leaves nothing behind in the worker's cache.

When no workflow task is running, the server sends a query straight to a worker, with the history as
it stands: events after the last completed task included (a signal whose task is still pending, say
on the sticky queue of a worker that crashed). To answer, the SDK runs the workflow on those events,
and keeps the run cached. When the real task for them arrives, the run goes on from that cache: the
workflow has met the events of one workflow task in two activations. Whatever it did between the two
was never sent to the server (a poll timer started, then cancelled), and its commands no longer match
the history: every later replay fails, and the order is stuck (tests/test_query_after_crash.py; seen
in the chaos benchmark as "Timer fired event did not have expected timer id 4, it was 5").

So the worker evicts the run when such a query follows an activation that may have come with it:
one not replaying and resolving no local activity (a local activity's result only ever comes in the
worker's own workflow task, never with a query). The eviction is asked before the answer is sent, so
no task can reach the cached run in between; the query is still answered. The next workflow task
replays the history whole, one activation per task, as every replay does. A query after a task the
worker completed itself (its last activation resolved a local activity, or was a replay) leaves the
cache alone: evicting there would only cost a replay, and a replay recomputes the times the workflow
read with `workflow.now()` after a local activity's answer, which sdk-core does not always reproduce
exactly (a known limit, see the README's "queries after a crash" row).

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


def may_come_with_a_query(activation: WorkflowActivation) -> bool:
    """New events run outside the worker's own task: not a replay, no local activity resolved."""
    return not activation.is_replaying and not any(
        job.HasField("resolve_activity") and job.resolve_activity.is_local for job in activation.jobs)


def evict_after_direct_queries(worker: Worker) -> Worker:
    """Wraps the worker's activation handler (an SDK internal, checked by the test named above)."""
    workflows = worker._workflow_worker
    if workflows is None:
        return worker
    handle = workflows._handle_activation
    suspect: dict[str, bool] = {}  # run id -> whether its last activation may have come with a query

    async def handle_activation(activation: WorkflowActivation) -> None:
        run_id = activation.run_id
        if is_direct_query(activation):
            if suspect.pop(run_id, False):
                workflows._bridge_worker().request_workflow_eviction(run_id)
        elif any(job.HasField("remove_from_cache") for job in activation.jobs):
            suspect.pop(run_id, None)
        elif not any(job.HasField("query_workflow") for job in activation.jobs):
            suspect[run_id] = may_come_with_a_query(activation)
        await handle(activation)

    workflows._handle_activation = handle_activation
    return worker
