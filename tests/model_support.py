"""Running OrderWorkflow against the scripted venue on the time-skipping server: workers that can
be restarted on the same task queue, and reading a continue-as-new chain's histories."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.publish import PublishActivities
from tests.scripted_venue import ScriptedVenue, scripted_context
from workflows.order import OrderWorkflow


# Skipped time is worked through at the worker's pace (time skips only while nothing is in flight),
# so on a loaded machine an hour of backoff timers takes long: the bound holds there (tests.under_load)
# and still fails a stuck order.
SKIP_RPC_TIMEOUT_S = 180


async def skip_time(time_env, duration: timedelta) -> None:
    """time_env.sleep, its RPC bounded by SKIP_RPC_TIMEOUT_S rather than the client's default: the
    test server answers once the workflows have worked through the skipped time."""
    request = SleepRequest()
    request.duration.FromTimedelta(duration)
    await time_env.client.test_service.unlock_time_skipping_with_sleep(
        request, timeout=timedelta(seconds=SKIP_RPC_TIMEOUT_S))


class ScriptedWorkers:
    """One worker at a time on `task_queue`, serving `venue`; restart() stops it and starts a new one
    (its workflow cache gone: every open order replays its history on the new worker)."""

    def __init__(self, client: Client, task_queue: str, venue: ScriptedVenue, settings, redis, **params) -> None:
        self.client, self.task_queue, self.venue = client, task_queue, venue
        self.context = scripted_context(settings, **params)
        self.publish = PublishActivities(redis, settings)
        self.published: list = []
        self.worker: Worker | None = None

    async def start(self) -> None:
        # Unsandboxed: module constants (HISTORY_BOUND) can be lowered by a test; determinism is
        # still checked, since every restart replays the open orders' histories.
        self.worker = Worker(self.client, task_queue=self.task_queue, workflows=[OrderWorkflow],
                             activities=self.venue.activities(self.publish, self.context, self.published),
                             workflow_runner=UnsandboxedWorkflowRunner(),
                             # No sticky cache: every workflow task replays the history (a determinism
                             # check on every step), and a restarted worker's tasks are never left on
                             # the stopped worker's sticky queue, which the test server does not time out.
                             max_cached_workflows=0)
        await self.worker.__aenter__()

    async def stop(self) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await worker.__aexit__(None, None, None)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> "ScriptedWorkers":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def chain_histories(client: Client, workflow_id: str, first_run_id: str) -> list[list]:
    """The events of every run of a workflow id, first run first (following continue-as-new)."""
    runs: list[list] = []
    run_id: str | None = first_run_id
    while run_id:
        events = [e async for e in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events()]
        runs.append(events)
        last = events[-1] if events else None
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last is not None and last.HasField("workflow_execution_continued_as_new_event_attributes")
                  else None)
    return runs


# Workflow task failures the server makes itself, not our code: a task that tried to complete the
# workflow while a new signal or update had arrived (the SDK runs the workflow again with it).
SERVER_CAUSES = {WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND}


def failed_workflow_tasks(runs: list[list]) -> list[str]:
    """Workflow task failures of our code (an exception, nondeterminism, a deadlock) in any run."""
    return [f"{WorkflowTaskFailedCause.Name(e.workflow_task_failed_event_attributes.cause)}: "
            f"{e.workflow_task_failed_event_attributes.failure.message}"
            for events in runs for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
            and e.workflow_task_failed_event_attributes.cause not in SERVER_CAUSES]


def open_timers(events: list) -> set[int]:
    started = {e.event_id for e in events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED}
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            started.discard(e.timer_fired_event_attributes.started_event_id)
        elif e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED:
            started.discard(e.timer_canceled_event_attributes.started_event_id)
    return started


CLOSED = {EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
          EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
          EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT}


def resting(events: list) -> bool:
    """The run is closed, or its last workflow task completed and it waits on a timer."""
    if not events:
        return False
    last = events[-1]
    if last.event_type in CLOSED:
        return True
    busy = {EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED}
    return last.event_type not in busy and bool(open_timers(events))


async def settle(client, workflow_id: str, first_run_id: str, timeout: float = 8.0) -> bool:
    """True once the latest run rests (closed, or its task done and a timer pending)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        runs = await chain_histories(client, workflow_id, first_run_id)
        if resting(runs[-1]):
            return True
        await asyncio.sleep(0.05)
    return False
