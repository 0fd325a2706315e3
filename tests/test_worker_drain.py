"""`tom worker` stopped by SIGTERM (what Kubernetes sends): it stops taking work, lets in-flight
venue calls finish within its drain bound (GRACEFUL_SHUTDOWN), and exits 0, and a call that never
finishes cannot hold the process past that bound. Readiness and in-flight are read from events
(the worker's log line, the simulated venue's request counter), never from fixed sleeps."""
import asyncio
import os
import signal
import time

from activities.venues.simulated import FAULTS_KEY, REQUESTS_KEY
from oms.models import OrderSnapshot, OrderState
from tests.conftest import WORKER_DRAIN_S, stop_process, tom_process
from tests.helpers import local_activity_calls, make_signal, start_order
from workers.worker import GRACEFUL_SHUTDOWN

VENUE_DELAY_S = 3.0


def slow_venue_config(stack_settings, tmp_path, execution_timeout_ms: int):
    execution = stack_settings.execution.model_dump(mode="json")
    execution["simulation"]["delay_ms"] = int(VENUE_DELAY_S * 1000)
    execution["direct"]["poll_interval_ms"] = 600_000  # the poller's one round at start, then quiet
    execution["orphan_sweep_interval_s"] = 3600  # likewise the orphan sweep
    settings = stack_settings.with_overrides(execution=execution, orders={
        **stack_settings.orders.model_dump(mode="json"), "execution_timeout_ms": execution_timeout_ms})
    path = tmp_path / "slow.yaml"
    path.write_text(settings.to_yaml())
    return settings, path


async def wait_until(predicate, what: str, timeout: float = 60, proc=None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if proc is not None:
            assert proc.poll() is None, f"the worker exited with {proc.returncode} before {what}"
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.02)


# Background tasks that list the account's open orders once at start (one venue request each),
# each under its lease: the fill poller and the orphan sweep.
LISTERS = ("poller:lease:simulation:default", "sweep:lease:simulation:default")


async def ready_worker(config, tmp_path, redis):
    """A `tom worker` that logged readiness and whose background listers made their first venue
    call; returns it with the venue's request count at that point."""
    log = tmp_path / "worker.log"
    worker = tom_process(config, "worker", "--processes", "1", log_path=log)

    async def started() -> bool:
        return log.exists() and "worker on task queue" in log.read_text()

    async def listed() -> bool:  # each lister takes its lease, then counts its request
        return all([await redis.exists(key) for key in LISTERS]) and int(await redis.get(REQUESTS_KEY) or 0) >= len(LISTERS)

    await wait_until(started, "readiness log line", proc=worker)
    await wait_until(listed, "first listing of each background task", proc=worker)
    return worker, log, int(await redis.get(REQUESTS_KEY))


async def test_sigterm_drains_an_in_flight_submission_and_exits_zero(temporal_env, stack_settings, redis, tmp_path):
    assert GRACEFUL_SHUTDOWN.total_seconds() == WORKER_DRAIN_S
    settings, config = slow_venue_config(stack_settings, tmp_path, execution_timeout_ms=10_000)
    worker, log, baseline = await ready_worker(config, tmp_path, redis)
    try:
        handle = await start_order(temporal_env.client, settings.temporal.task_queue, make_signal(quantity="0.1"))

        async def submitting() -> bool:  # the submit entered the venue and waits out its delay
            return int(await redis.get(REQUESTS_KEY)) == baseline + 1

        await wait_until(submitting, "submission at the venue", proc=worker)
        assert await redis.get(f"order:{handle.id}") is None  # nothing answered yet
        signalled = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, WORKER_DRAIN_S + 10)
        took = time.monotonic() - signalled
    finally:
        stop_process(worker, expect=None)  # only if the checks above failed: never silently
    assert code == 0, log.read_text()
    assert took < WORKER_DRAIN_S, took  # the call needed ~3 s of the 20 s bound
    text = log.read_text()
    assert "stopping: draining in-flight tasks" in text and text.rstrip().endswith("worker stopped"), text
    # The call in flight at SIGTERM finished during the drain: answered, recorded and published by
    # this worker (no other worker ran), one venue order.
    cached = OrderSnapshot.model_validate_json(await redis.get(f"order:{handle.id}"))
    assert cached.state == OrderState.FILLED, cached
    assert [c for c in await local_activity_calls(handle) if c[0] == "venue_submit"] == [("venue_submit", None)]
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == [f"sim:simulation:order:{handle.id}"]


async def test_a_call_that_never_finishes_cannot_hold_the_stop_past_the_drain_bound(
        temporal_env, stack_settings, redis, tmp_path):
    settings, config = slow_venue_config(stack_settings, tmp_path, execution_timeout_ms=120_000)
    await redis.hset(FAULTS_KEY, "hang_next", 1)  # placed, then the answer never comes
    worker, log, _ = await ready_worker(config, tmp_path, redis)
    try:
        handle = await start_order(temporal_env.client, settings.temporal.task_queue, make_signal(quantity="0.1"))

        async def hanging() -> bool:
            return await redis.hget(FAULTS_KEY, "hang_next") == "0"

        await wait_until(hanging, "hanging submission", proc=worker)
        signalled = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, WORKER_DRAIN_S + 10)
        took = time.monotonic() - signalled
    finally:
        stop_process(worker, expect=None)
    assert code == 0, log.read_text()
    assert WORKER_DRAIN_S - 1 <= took < WORKER_DRAIN_S + 10, took  # waited its bound, then gave up
    text = log.read_text()
    assert "drain not finished after 0:00:20: abandoning in-flight tasks" in text and "worker stopped" in text
    # The abandoned order is not lost: the next worker takes it over and finds the one order placed.
    second = tom_process(config, "worker", "--processes", "1", log_path=tmp_path / "worker-2.log")
    try:
        final = await asyncio.wait_for(handle.result(), 120)
    finally:
        stop_process(second)
    assert final.state == OrderState.FILLED, final
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == [f"sim:simulation:order:{handle.id}"]
