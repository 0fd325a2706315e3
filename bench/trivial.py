"""The floor under an order's cost: a trivial workflow (one local activity) on the same stack.

    python -m bench.trivial --address HOST:PORT --seconds 20 --rate 300

One process, as `tom worker --with-consumer` runs: a worker on its own task queue, the same
pydantic data converter, the sandbox, slot and activation-thread settings of the order worker
(`temporal.workflow_threads`), and workflows started eagerly at
the offered rate from the same client. Prints one JSON line: trivial_workflows_per_s (completed
within the window / window) and worker_cpu_ms_per_workflow. `bench.throughput` runs it after the
order run, so `orders_per_s` can be read against it as a ratio on the same machine at the same time.
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
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from workers.payload_converter import shared_pydantic_data_converter
from workers.worker import ACTIVITY_SLOTS, WORKFLOW_TASK_SLOTS, activation_executor


@activity.defn
async def touch(order_id: str) -> str:
    return order_id


@workflow.defn
class TrivialWorkflow:
    @workflow.run
    async def run(self, order_id: str) -> str:
        return await workflow.execute_local_activity(touch, order_id, start_to_close_timeout=timedelta(seconds=10))


async def measure(address: str, namespace: str, seconds: float, rate: float, sandbox: bool,
                  workflow_threads: int = 0) -> dict:
    client = await Client.connect(address, namespace=namespace, data_converter=shared_pydantic_data_converter)
    queue = f"trivial-{uuid.uuid4().hex[:8]}"
    runner = {} if sandbox else {"workflow_runner": UnsandboxedWorkflowRunner()}
    me = psutil.Process()
    async with Worker(client, task_queue=queue, workflows=[TrivialWorkflow], activities=[touch],
                      max_concurrent_workflow_tasks=WORKFLOW_TASK_SLOTS, max_concurrent_local_activities=ACTIVITY_SLOTS,
                      workflow_task_executor=activation_executor(workflow_threads), **runner):
        done: dict[str, float] = {}

        async def one(n: int) -> None:
            handle = await client.start_workflow(TrivialWorkflow.run, f"t-{n}", id=f"trivial-{queue}-{n}",
                                                 task_queue=queue, request_eager_start=True)
            await handle.result()
            done[handle.id] = time.monotonic()

        warm = [asyncio.create_task(one(-i - 1)) for i in range(50)]
        await asyncio.gather(*warm)
        done.clear()
        cpu0 = sum(me.cpu_times()[:2])
        started, sent, tasks = time.monotonic(), 0, []
        while time.monotonic() - started < seconds:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                tasks.append(asyncio.create_task(one(sent)))
                sent += 1
            await asyncio.sleep(0.005)
        window = time.monotonic() - started
        in_window = sum(1 for at in done.values() if at <= started + window)
        cpu_s = sum(me.cpu_times()[:2]) - cpu0
        # Stragglers get a bounded wait: the figure is what finished within the window.
        _, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
    return {"trivial_workflows_per_s": round(in_window / window, 1), "trivial_offered": sent,
            "trivial_unfinished_after_drain": len(pending),
            "trivial_worker_cpu_ms_per_workflow": round(cpu_s * 1000 / max(1, in_window), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trivial")
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--workflow-threads", type=int, default=0, help="as temporal.workflow_threads")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.address, args.namespace, args.seconds, args.rate, args.sandbox,
                                        args.workflow_threads))))


if __name__ == "__main__":
    main()
