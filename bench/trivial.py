"""The floor under an order's cost: workflows that do nothing, on the same stack.

    python -m bench.trivial --address HOST:PORT [--server-pid PID] [--shaped-rate R] --seconds 20 --rate 300

One process, as `tom worker --with-consumer` runs: a worker on its own task queue, the same
pydantic data converter, the sandbox, slot and activation-thread settings of the order worker
(`temporal.workflow_threads`), and workflows started eagerly at the offered rate from the same
client, as the intake starts orders. Three workflows, one after the other:

- trivial: one local activity. The floor any durable step on this stack costs.
- order_shaped: the durable shape of a market order that goes out at once, with no work in it: two
  local activities (prepare-and-place, then the recording) in the first workflow task, a 1 ms timer
  (the closing barrier, `_record_before_closing`) and the second task that completes the run.
  What the SDK and the server charge for that shape, whatever the order's own code does. Offered at
  --shaped-rate (bench.throughput passes the rate the orders reached: CPU per workflow is compared
  at the same completions per second; a run beyond capacity would charge its backlog to the few
  that finished).
- two_local_activities: the same without the closing timer and its second task, at the same rate:
  what the closing barrier costs, by difference.

Nothing in the process waits on a result within the window (the intake does not either): each
workflow's close time is read from the server afterwards, and those closed within the window count.
Prints one JSON line: <kind>_workflows_per_s, <kind>_worker_cpu_ms_per_workflow and, given
--server-pid, <kind>_server_cpu_ms_per_workflow. `bench.throughput` runs it after the order run, so
`orders_per_s` and the CPU per order can be read against these as ratios on the same machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import timedelta

import psutil
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from workers.payload_converter import shared_pydantic_data_converter
from workers.worker import ACTIVITY_SLOTS, WORKFLOW_TASK_SLOTS, activation_executor

STEP = timedelta(seconds=10)


@activity.defn
async def touch(order_id: str) -> str:
    return order_id


@workflow.defn
class TrivialWorkflow:
    @workflow.run
    async def run(self, order_id: str) -> str:
        return await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=STEP)


@workflow.defn
class OrderShapedWorkflow:
    @workflow.run
    async def run(self, order_id: str) -> str:
        await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=STEP)
        await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=STEP)
        await workflow.sleep(timedelta(milliseconds=1))
        return order_id


@workflow.defn
class TwoLocalActivitiesWorkflow:
    @workflow.run
    async def run(self, order_id: str) -> str:
        await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=STEP)
        return await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=STEP)


KINDS = {"trivial": TrivialWorkflow, "order_shaped": OrderShapedWorkflow,
         "two_local_activities": TwoLocalActivitiesWorkflow}


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return times.user + times.system


async def closed_by(handles: list[WorkflowHandle], deadline: float) -> tuple[int, int]:
    """(closed at or before `deadline`, not closed after a bounded wait) from the server's records."""
    gate = asyncio.Semaphore(50)

    async def close_time(handle: WorkflowHandle) -> float | None:
        async with gate:
            for _ in range(120):
                described = await handle.describe()
                if described.close_time is not None:
                    return described.close_time.timestamp()
                await asyncio.sleep(0.5)
            return None

    times = await asyncio.gather(*(close_time(h) for h in handles))
    return sum(1 for t in times if t is not None and t <= deadline), sum(1 for t in times if t is None)


async def measure_kind(client: Client, kind: str, seconds: float, rate: float, sandbox: bool,
                       workflow_threads: int, server: psutil.Process | None) -> dict:
    queue = f"{kind}-{uuid.uuid4().hex[:8]}"
    workflow_cls = KINDS[kind]
    runner = {} if sandbox else {"workflow_runner": UnsandboxedWorkflowRunner()}
    me = psutil.Process()
    async with Worker(client, task_queue=queue, workflows=[workflow_cls], activities=[touch],
                      max_concurrent_workflow_tasks=WORKFLOW_TASK_SLOTS, max_concurrent_local_activities=ACTIVITY_SLOTS,
                      workflow_task_executor=activation_executor(workflow_threads), **runner):
        async def start(n: int) -> WorkflowHandle:
            return await client.start_workflow(workflow_cls.run, f"t-{n}", id=f"{queue}-{n}",
                                               task_queue=queue, request_eager_start=True)

        warm = await asyncio.gather(*(start(-i - 1) for i in range(50)))
        await asyncio.gather(*(h.result() for h in warm))
        cpu0, server0 = cpu_seconds(me), cpu_seconds(server)
        started, sent, tasks = time.time(), 0, []
        while time.time() - started < seconds:
            due = int((time.time() - started) * rate)
            while sent < due:
                tasks.append(asyncio.create_task(start(sent)))
                sent += 1
            await asyncio.sleep(0.005)
        window = time.time() - started
        cpu_s, server_s = cpu_seconds(me) - cpu0, cpu_seconds(server) - server0
        handles = await asyncio.gather(*tasks)
        in_window, unfinished = await closed_by(handles, started + window)
    out = {f"{kind}_workflows_per_s": round(in_window / window, 1), f"{kind}_offered": sent,
           f"{kind}_offered_rate_per_s": round(rate, 1),
           f"{kind}_unfinished_after_drain": unfinished,
           f"{kind}_worker_cpu_ms_per_workflow": round(cpu_s * 1000 / max(1, in_window), 2)}
    if server is not None:
        out[f"{kind}_server_cpu_ms_per_workflow"] = round(server_s * 1000 / max(1, in_window), 2)
    return out


async def measure(address: str, namespace: str, seconds: float, rate: float, sandbox: bool,
                  workflow_threads: int = 0, server_pid: int | None = None, shaped_rate: float | None = None) -> dict:
    client = await Client.connect(address, namespace=namespace, data_converter=shared_pydantic_data_converter)
    server = psutil.Process(server_pid) if server_pid else None
    out: dict = {}
    rates = {"trivial": rate, "order_shaped": shaped_rate or rate, "two_local_activities": shaped_rate or rate}
    for kind in KINDS:
        out.update(await measure_kind(client, kind, seconds, rates[kind], sandbox, workflow_threads, server))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trivial")
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--workflow-threads", type=int, default=0, help="as temporal.workflow_threads")
    parser.add_argument("--server-pid", type=int, default=None, help="the Temporal server's process, for its CPU")
    parser.add_argument("--shaped-rate", type=float, default=None,
                        help="offered rate of order_shaped and two_local_activities (default: --rate)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.address, args.namespace, args.seconds, args.rate, args.sandbox,
                                        args.workflow_threads, args.server_pid, args.shaped_rate))))


if __name__ == "__main__":
    main()
