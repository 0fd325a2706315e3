"""`tom worker --processes N`: a child SIGKILLed mid-flight is replaced, SIGTERM drains every child
and the supervisor exits 0, and no order is lost or placed twice. Children are found through the
process table (psutil), never assumed from a sleep."""
import asyncio
import json
import os
import signal
from decimal import Decimal

import psutil

from activities.venues.simulated import REQUESTS_KEY
from oms.models import OrderState
from tests.conftest import WORKER_DRAIN_S, stop_process, tom_process
from tests.helpers import executions, make_signal, start_order
from tests.test_worker_drain import slow_venue_config, wait_until
from workers.runtime import available_cores


def worker_children(supervisor) -> list[psutil.Process]:
    try:
        return [c for c in psutil.Process(supervisor.pid).children() if c.is_running()
                and c.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


async def test_available_cores_follow_the_affinity():
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


async def test_a_killed_child_is_replaced_and_sigterm_drains_all(temporal_env, stack_settings, redis, tmp_path):
    settings, config = slow_venue_config(stack_settings, tmp_path, execution_timeout_ms=10_000)
    log = tmp_path / "supervisor.log"
    supervisor = tom_process(config, "worker", "--processes", "2", log_path=log)
    try:
        async def two_ready() -> bool:
            return len(worker_children(supervisor)) == 2 and log.read_text().count("worker on task queue") == 2

        await wait_until(two_ready, "two ready worker processes", proc=supervisor)
        first_pids = {c.pid for c in worker_children(supervisor)}

        queue = settings.temporal.task_queue
        handles = [await start_order(temporal_env.client, queue, make_signal(quantity="0.1")) for _ in range(6)]
        baseline = int(await redis.get(REQUESTS_KEY) or 0)

        async def submitting() -> bool:  # some submissions are at the (slow) venue now
            return int(await redis.get(REQUESTS_KEY) or 0) > baseline

        await wait_until(submitting, "a submission at the venue", proc=supervisor)
        victim = sorted(first_pids)[0]
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            pids = {c.pid for c in worker_children(supervisor)}
            return len(pids) == 2 and victim not in pids and log.read_text().count("worker on task queue") == 3

        await wait_until(replaced, "a replacement worker process", proc=supervisor)
        assert "exited with -9" in log.read_text()

        finals = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)
        assert [f.state for f in finals] == [OrderState.FILLED] * 6, [(f.state, f.reason) for f in finals]

        # SIGTERM mid-flight: every child drains its in-flight submission, the supervisor exits 0.
        more = [await start_order(temporal_env.client, queue, make_signal(quantity="0.1")) for _ in range(2)]
        busy_from = int(await redis.get(REQUESTS_KEY))

        async def in_flight() -> bool:
            return int(await redis.get(REQUESTS_KEY)) > busy_from

        await wait_until(in_flight, "a submission in flight", proc=supervisor)
        children = worker_children(supervisor)
        os.kill(supervisor.pid, signal.SIGTERM)  # the supervisor alone: it must forward the stop
        code = await asyncio.to_thread(supervisor.wait, WORKER_DRAIN_S + 10)
    finally:
        stop_process(supervisor, expect=None)  # only if a check above failed
    assert code == 0, log.read_text()[-3000:]
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    assert log.read_text().count("worker stopped") >= 2

    # A fresh worker finishes what the drained ones left: nothing lost, nothing placed twice.
    worker = tom_process(config, "worker", "--processes", "1", log_path=tmp_path / "after.log")
    try:
        rest = await asyncio.wait_for(asyncio.gather(*(h.result() for h in more)), 120)
    finally:
        stop_process(worker)
    assert [f.state for f in rest] == [OrderState.FILLED] * 2
    everything = finals + rest
    venue_keys = [k async for k in redis.scan_iter("sim:simulation:order:*")]
    assert sorted(k.rsplit(":", 1)[1] for k in venue_keys) == sorted(f.client_order_id for f in everything)
    fills = await executions(redis)
    assert len({f["fill_id"] for f in fills}) == len(fills)
    for final in everything:
        venue = json.loads(await redis.get(f"sim:simulation:order:{final.client_order_id}"))
        assert sum((Decimal(f["quantity"]) for f in venue["fills"]), Decimal(0)) == final.filled_quantity


def test_processes_must_be_positive(config_file):
    from tests.conftest import run_tom

    result = run_tom(config_file, "worker", "--processes", "0", timeout=60)
    assert result.returncode == 2 and "must be 1 or more" in result.stderr


def test_the_supervisor_restarts_a_crashing_child_with_backoff_and_stops_on_a_config_error(tmp_path, caplog):
    """Real child processes standing in for workers: one that crashes at once is restarted with a
    doubling backoff (no CPU spin); one that exits 2, tom's code for a configuration error that no
    restart fixes, stops the supervisor, which exits 2 too."""
    import logging
    import sys
    import threading

    from workers.supervisor import Supervisor

    counter = tmp_path / "starts"
    crash = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x'); raise SystemExit(1)"]
    supervisor = Supervisor(crash, 1)
    stopper = threading.Timer(3.5, supervisor.request_stop, args=(15, None))
    caplog.set_level(logging.INFO, "tom.supervisor")
    stopper.start()
    try:
        code = supervisor.run()
    finally:
        stopper.cancel()
    starts = len(counter.read_text())
    # Backoff 1 s, 2 s, ...: within 3.5 s at most 3 starts, never a spin.
    assert 2 <= starts <= 3, starts
    assert code == 0 and supervisor.restarts >= 1 and "restarting in" in caplog.text

    config_error = [sys.executable, "-c", "raise SystemExit(2)"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor(sleeper, 2)
    supervisor.command = config_error  # the second child fails its configuration
    original_start = supervisor._start

    def start(slot: int) -> None:
        supervisor.command = sleeper if slot == 1 else config_error
        original_start(slot)

    supervisor._start = start
    code = supervisor.run()
    assert code == 2 and "configuration error: stopping all workers" in caplog.text
    assert supervisor.restarts == 0
    assert all(child.process.poll() is not None for child in supervisor.children.values())
