"""Sustained throughput: market orders per second to a terminal state, one worker process by default.

    python -m bench.throughput [--seconds 60] [--rate 150] [--processes N] [--workflow-threads N]

Signals are offered on the `signals` stream at --rate for --seconds to `tom worker --with-consumer`;
a terminal event on `order_events` marks an order done. orders_per_s = orders that reached a
terminal state during the offered window / window length; the backlog left at its end shows
whether the rate was sustainable. CPU and memory are read per process with psutil:
worker_cpu_ms_per_order and server_cpu_ms_per_order are CPU time spent in the window per order
finished in it. orders_closed_per_s and *_per_closed_order count runs closed within the window
instead (an order's terminal event goes out one workflow task before its run closes). Then, on the
same Temporal server, `bench.trivial` runs at the same offered rate a one-local-activity workflow
(trivial_workflows_per_s: the floor the stack itself sets; orders_vs_trivial: 1.0 when an order goes
as fast), and at the rate the orders reached a workflow of the order's durable shape with no work in
it (order_shaped_*: two local activities, the 1 ms closing timer, two workflow tasks) and the same
without the timer (two_local_activities_*); worker_cpu_vs_order_shaped and
server_cpu_vs_order_shaped are the order's own code as a ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

import psutil
import redis.asyncio as aioredis
from temporalio.client import Client

from bench.latency import signal_payload
from bench.stack import BenchStack, emit, workflow_threads_override
from bench.trivial import closed_by
from oms.events import EVENT_FIELD, ORDER_EVENTS_STREAM, SIGNAL_FIELD
from oms.models import TERMINAL_STATES



async def count_terminal(redis: aioredis.Redis, stop: asyncio.Event, done: dict[str, float]) -> None:
    last = "$"
    while not stop.is_set():
        response = await redis.xread({ORDER_EVENTS_STREAM: last}, count=1000, block=200)
        for _, entries in response or []:
            for entry_id, fields in entries:
                last = entry_id
                event = json.loads(fields[EVENT_FIELD])
                if event["state"] in TERMINAL_STATES:  # a StrEnum set: holds the plain strings too
                    done.setdefault(event["order_id"], time.time())


def cpu_percent(procs: dict[str, psutil.Process], seconds: float, start: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        times = proc.cpu_times()
        children = sum(c.cpu_times().user + c.cpu_times().system for c in proc.children(recursive=True))
        out[name] = round((times.user + times.system + children - start[name]) / seconds * 100, 1)
    return out


def cpu_total(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system + sum(c.cpu_times().user + c.cpu_times().system
                                           for c in proc.children(recursive=True))


async def run(seconds: float, rate: float, processes: int = 1, workflow_threads: int | None = None) -> dict:
    with BenchStack(workflow_threads_override(workflow_threads)) as stack:
        stack.start_temporal()
        stack.start_redis()
        stack.start_worker("worker", "--with-consumer", "--processes", str(processes))
        procs = {name: psutil.Process(p.pid) for name, p in stack.procs.items()}
        redis = aioredis.from_url(stack.settings.messaging.redis_url, decode_responses=True)
        stop, done = asyncio.Event(), {}
        counter = asyncio.create_task(count_terminal(redis, stop, done))
        try:
            for i in range(50):  # warm-up
                await redis.xadd("signals", {SIGNAL_FIELD: signal_payload("warm", i)})
            await asyncio.sleep(3)
            done.clear()
            cpu_start = {name: cpu_total(p) for name, p in procs.items()}
            started = time.time()
            sent = 0
            while time.time() - started < seconds:
                due = int((time.time() - started) * rate)
                while sent < due:
                    await redis.xadd("signals", {SIGNAL_FIELD: signal_payload("tp", sent)})
                    sent += 1
                await asyncio.sleep(0.01)
            window = time.time() - started
            in_window = sum(1 for order_id, at in done.items() if order_id.startswith("order-tp-") and at <= started + window)
            cpu = cpu_percent(procs, window, cpu_start)
            cpu_ms = {name: (cpu_total(p) - cpu_start[name]) * 1000 / max(1, in_window) for name, p in procs.items()}
            worker = stack.stats("worker")
            drain_deadline = time.time() + 120
            while sum(1 for o in done if o.startswith("order-tp-")) < sent and time.time() < drain_deadline:
                await asyncio.sleep(0.5)
            finished = sum(1 for o in done if o.startswith("order-tp-"))
            # An order's terminal event goes out before its run closes (the closing barrier's task
            # follows): the floor workflows are counted by close time, so orders are too.
            client = await Client.connect(stack.settings.temporal.address)
            closed_in_window, _ = await closed_by(
                [client.get_workflow_handle(f"order-tp-{n}") for n in range(sent)], started + window)
            cpu_ms_closed = {name: ms * in_window / max(1, closed_in_window) for name, ms in cpu_ms.items()}
        finally:
            stop.set()
            await counter
            await redis.aclose()
        stack.kill("worker", signal.SIGTERM)
        trivial = json.loads(subprocess.run(
            [sys.executable, "-m", "bench.trivial", "--address", stack.settings.temporal.address,
             "--seconds", str(min(seconds, 30)), "--rate", str(rate), "--server-pid", str(stack.procs["temporal"].pid),
             "--shaped-rate", str(max(1.0, in_window / window))]
            + ([] if not stack.settings.temporal.sandbox else ["--sandbox"])
            + ["--workflow-threads", str(stack.settings.temporal.workflow_threads)],
            check=True, capture_output=True, text=True, timeout=3 * min(seconds, 30) + 300).stdout.splitlines()[-1])
    orders_per_s = round(in_window / window, 1)
    return {
        "benchmark": "throughput", "seconds": round(window, 1), "offered_rate_per_s": rate, "offered": sent,
        "orders_per_s": orders_per_s, "backlog_at_end": sent - in_window, "worker_processes": processes,
        "orders_closed_per_s": round(closed_in_window / window, 1),
        "worker_cpu_ms_per_order": round(cpu_ms["worker"], 2), "server_cpu_ms_per_order": round(cpu_ms["temporal"], 2),
        **trivial, "orders_vs_trivial": round(orders_per_s / trivial["trivial_workflows_per_s"], 3)
        if trivial["trivial_workflows_per_s"] else None,
        # The order's own code, as a ratio: its CPU per closed run against the same durable shape with
        # no work in it, both counted by close time.
        "worker_cpu_ms_per_closed_order": round(cpu_ms_closed["worker"], 2),
        "server_cpu_ms_per_closed_order": round(cpu_ms_closed["temporal"], 2),
        "worker_cpu_vs_order_shaped": round(cpu_ms_closed["worker"] / trivial["order_shaped_worker_cpu_ms_per_workflow"], 2),
        "server_cpu_vs_order_shaped": round(cpu_ms_closed["temporal"] / trivial["order_shaped_server_cpu_ms_per_workflow"], 2),
        "all_terminal_after_drain": finished == sent,
        "workflow_threads": stack.settings.temporal.workflow_threads, "worker_rss_mb": worker["rss_mb"],
        "cpu_percent": cpu, "machine_cores": psutil.cpu_count(), "workflow_sandbox": stack.settings.temporal.sandbox,
        "target_orders_per_s": 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=150, help="offered signals per second")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (tom worker --processes)")
    parser.add_argument("--workflow-threads", type=int, default=None,
                        help="temporal.workflow_threads for the worker (default: the config's, 0 = inline)")
    args = parser.parse_args()
    emit(asyncio.run(run(args.seconds, args.rate, args.processes, args.workflow_threads)))


if __name__ == "__main__":
    main()
