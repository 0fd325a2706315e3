"""Time in force and long-lived orders under the time-skipping test server: days in seconds."""
import time
from datetime import timedelta

import pytest_asyncio

from oms.models import OrderState
from tests.helpers import make_signal, start_order


@pytest_asyncio.fixture
async def skipping_worker(time_env, fast_settings, redis):
    from workers.worker import build_worker

    worker = await build_worker(time_env.client, fast_settings, redis)
    async with worker:
        yield worker


async def test_gtd_order_expires_after_three_days_in_seconds(time_env, skipping_worker, task_queue):
    now = await time_env.get_current_time()
    expire_at = now + timedelta(days=3)
    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1", time_in_force="GTD",
                         expire_at=expire_at.isoformat())
    started = time.monotonic()
    handle = await start_order(time_env.client, task_queue, signal)
    snap = await handle.result()
    elapsed = time.monotonic() - started
    assert snap.state == OrderState.EXPIRED and snap.reason == "expire_at reached"
    assert snap.transitions[-1].at >= expire_at
    assert elapsed < 60, elapsed
    print(f"3-day GTD took {elapsed:.1f}s")


async def run_chain_lengths(client, workflow_id: str, first_run_id: str) -> list[int]:
    """History length of each run of a continue-as-new chain."""
    lengths, run_id = [], first_run_id
    while run_id:
        events = [e async for e in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events()]
        lengths.append(len(events))
        last = events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.HasField("workflow_execution_continued_as_new_event_attributes") else None)
    return lengths


async def test_long_lived_gtc_order_keeps_history_bounded_for_20_days(time_env, skipping_worker, task_queue):
    from workflows.order import HISTORY_BOUND

    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1")  # GTC, never fills
    handle = await start_order(time_env.client, task_queue, signal)
    await time_env.sleep(timedelta(days=20))
    await handle.signal("cancel", {"reason": "end of test"})
    snap = await handle.result()
    assert snap.state == OrderState.CANCELLED
    assert [t.state for t in snap.transitions][:4] == [OrderState.CREATED, OrderState.VALIDATED,
                                                       OrderState.SUBMITTED, OrderState.ACCEPTED]
    lengths = await run_chain_lengths(time_env.client, signal.workflow_id, handle.first_execution_run_id)
    assert len(lengths) >= 2, lengths  # it continued as new at least once
    assert max(lengths) <= HISTORY_BOUND + 50, lengths
    print(f"20-day GTC: {len(lengths)} runs, history lengths {lengths}")


async def test_execution_start_at_is_a_durable_timer(time_env, skipping_worker, task_queue):
    now = await time_env.get_current_time()
    start_at = now + timedelta(hours=6)
    signal = make_signal(execution={"start_at": start_at.isoformat()})
    snap = await (await start_order(time_env.client, task_queue, signal)).result()
    submitted = next(t for t in snap.transitions if t.state == OrderState.SUBMITTED)
    assert snap.state == OrderState.FILLED and submitted.at >= start_at
