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
