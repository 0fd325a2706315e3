"""Helpers shared by tests: signals, starting orders, reading the streams."""
from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from decimal import Decimal

from temporalio.client import Client, WorkflowHandle

from activities.venues.simulated import FAULTS_KEY
from oms.events import EVENT_FIELD, EXECUTION_FIELD, EXECUTIONS_STREAM, ORDER_EVENTS_STREAM
from oms.models import OrderSnapshot, Signal


def make_signal(**overrides) -> Signal:
    data = {"signal_id": f"t-{uuid.uuid4().hex[:12]}", "strategy_id": "test", "symbol": "ETH/USDT",
            "side": "buy", "quantity": "0.1"}
    data.update(overrides)
    return Signal.model_validate(data)


async def start_order(client: Client, task_queue: str, signal: Signal) -> WorkflowHandle:
    return await client.start_workflow("OrderWorkflow", signal, id=signal.workflow_id, task_queue=task_queue,
                                       result_type=OrderSnapshot)


async def run_order(client: Client, task_queue: str, signal: Signal) -> OrderSnapshot:
    return await (await start_order(client, task_queue, signal)).result()


async def until_placed_and_hanging(redis, worker: subprocess.Popen, left: int = 0, venue_key: str | None = None,
                                   timeout: float = 60) -> None:
    """Until the simulated venue has placed orders whose answers then hang (its `hang_next` fault
    counted down to `left`) and, if given, stored `venue_key`: whenever `worker` gets there, with no
    fixed allowance for its start-up. Fails if the worker exits first or `timeout` passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (int(await redis.hget(FAULTS_KEY, "hang_next")) <= left
               and (venue_key is None or await redis.exists(venue_key))):
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        assert asyncio.get_running_loop().time() < deadline, f"no placement hung within {timeout} s"
        await asyncio.sleep(0.05)


async def stream_items(redis, stream: str, field: str) -> list[dict]:
    return [json.loads(fields[field]) for _, fields in await redis.xrange(stream)]


async def executions(redis) -> list[dict]:
    return await stream_items(redis, EXECUTIONS_STREAM, EXECUTION_FIELD)


async def order_events(redis) -> list[dict]:
    return await stream_items(redis, ORDER_EVENTS_STREAM, EVENT_FIELD)


def dec(value) -> Decimal:
    return Decimal(str(value))


async def local_activity_calls(handle: WorkflowHandle) -> list[tuple[str, str | None]]:
    """(activity type, failure type or None) of every local activity the workflow recorded, in
    order: what the workflow really asked of the venue, whatever else (a poller) talked to it."""
    out = []
    async for event in handle.fetch_history_events():
        if not event.HasField("marker_recorded_event_attributes"):
            continue
        marker = event.marker_recorded_event_attributes
        if marker.marker_name != "core_local_activity":
            continue  # a workflow.patched marker
        data = json.loads(marker.details["data"].payloads[0].data)
        if data["activity_type"] == "prepare_and_place" and marker.HasField("failure"):
            data["activity_type"] = "prepare_order"  # it fails only in preparation (a venue answer is data)
        elif data["activity_type"] == "prepare_and_place":
            # Preparation and, when the order went out at once, the submission: two calls in one.
            out.append(("prepare_order", None))
            result = json.loads(marker.details["result"].payloads[0].data)
            if result.get("placed") is not None:
                failure = result["outcome"]["failure"]
                out.append(("venue_submit", failure["type"] if failure else None))
            continue
        failure = marker.failure
        while failure.HasField("cause") and not failure.HasField("application_failure_info"):
            failure = failure.cause
        kind = failure.application_failure_info.type if marker.HasField("failure") else None
        out.append((data["activity_type"], kind or (failure.message if marker.HasField("failure") else None)))
    return out


async def venue_call_count(handle: WorkflowHandle, activity: str) -> int:
    return sum(1 for name, _ in await local_activity_calls(handle) if name == activity)
