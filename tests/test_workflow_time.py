"""Time in force and long-lived orders under the time-skipping test server: days in seconds."""
import asyncio
import time
from datetime import timedelta
from decimal import Decimal

import pytest_asyncio

from oms.models import OrderState
from tests.helpers import executions, local_activity_calls, make_signal, start_order
from tests.test_workflow_lifecycle import touch


async def finished(handle, timeout_s: float = 120):
    """The order's end; on this server days pass in seconds, so a wait of minutes is a hang (a clock
    that stopped skipping): fail with where the order stood, never stall the run."""
    try:
        return await asyncio.wait_for(handle.result(), timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"{handle.id} not finished after {timeout_s}s: "
                             f"{(await handle.describe()).status}") from None


@pytest_asyncio.fixture
async def skipping_worker(time_env, fast_settings, redis):
    """The production worker (fill pollers included) on the time-skipping server."""
    from workers.worker import running_worker

    async with running_worker(time_env.client, fast_settings, redis) as worker:
        yield worker


async def test_gtd_order_expires_after_three_days_in_seconds(time_env, skipping_worker, task_queue):
    now = await time_env.get_current_time()
    expire_at = now + timedelta(days=3)
    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1", time_in_force="GTD",
                         expire_at=expire_at.isoformat())
    started = time.monotonic()
    handle = await start_order(time_env.client, task_queue, signal)
    snap = await finished(handle)
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
    snap = await finished(handle)
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
    snap = await finished(await start_order(time_env.client, task_queue, signal))
    submitted = next(t for t in snap.transitions if t.state == OrderState.SUBMITTED)
    assert snap.state == OrderState.FILLED and submitted.at >= start_at


async def test_venue_that_never_answers_is_unknown_then_reconciled_not_resubmitted(
        time_env, skipping_worker, task_queue, redis, fast_settings):
    """Under time skipping, execution_timeout_ms still bounds a venue call: the simulated venue
    places the order and then never answers (`hang_next`); the submit gives up after
    execution_timeout_ms, the order goes `unknown`, and reconciliation finds the one order placed
    (one venue order key for the client id), fills it, and never submits a second one."""
    from activities.venues.simulated import FAULTS_KEY

    await redis.hset(FAULTS_KEY, "hang_next", 1)
    started = time.monotonic()
    handle = await start_order(time_env.client, task_queue, make_signal(quantity="0.2"))
    snap = await finished(handle)
    elapsed = time.monotonic() - started
    # A venue call is a local activity: its timeout runs on the worker's clock, which time skipping
    # neither shortens nor lets a skipped-over server timer preempt.
    assert elapsed >= fast_settings.orders.execution_timeout_ms / 1000, elapsed
    states = [t.state for t in snap.transitions]
    assert states == [OrderState.CREATED, OrderState.VALIDATED, OrderState.SUBMITTED, OrderState.UNKNOWN,
                      OrderState.FILLED], states
    unknown = next(t for t in snap.transitions if t.state == OrderState.UNKNOWN)
    assert "submit outcome unknown" in unknown.reason
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == [
        f"sim:simulation:order:{snap.client_order_id}"]
    calls = [name for name, _ in await local_activity_calls(handle) if name.startswith("venue_")]
    assert calls == ["venue_submit", "venue_fetch"]  # the hung submit and one reconciling fetch
    assert await redis.hget(FAULTS_KEY, "hang_next") == "0"  # the fault fired
    fills = await executions(redis)
    assert sum(Decimal(f["quantity"]) for f in fills) == snap.filled_quantity == Decimal("0.2")


async def test_ioc_and_fok_end_in_their_states_under_time_skipping(time_env, skipping_worker, task_queue, redis):
    """IOC larger than the depth within its limit: partially filled, then expired for the rest
    (its fills published); FOK larger than the whole book: expired with no fill at all."""
    # One at a time: concurrent result() calls unbalance the test server's time-skipping lock, and
    # it then skips time under a running workflow task (task timeouts, then the 10-year run timeout).
    price = (touch("ETH/USDT", "buy") * Decimal("1.00002")).quantize(Decimal("0.01"))
    ioc = await (await start_order(time_env.client, task_queue, make_signal(
        quantity="60", order_type="limit", limit_price=str(price), time_in_force="IOC"))).result()
    fok = await (await start_order(time_env.client, task_queue, make_signal(
        symbol="ETH/BTC", quantity="250", time_in_force="FOK", reference_price="0.05"))).result()
    assert ioc.state == OrderState.EXPIRED and Decimal(0) < ioc.filled_quantity < Decimal(60), ioc
    assert [t.state for t in ioc.transitions][-2:] == [OrderState.PARTIALLY_FILLED, OrderState.EXPIRED]
    fills = await executions(redis)
    assert sum(Decimal(f["quantity"]) for f in fills if f["order_id"] == ioc.order_id) == ioc.filled_quantity
    assert fok.state == OrderState.EXPIRED and fok.filled_quantity == 0 and "FOK" in fok.reason
    assert OrderState.PARTIALLY_FILLED not in [t.state for t in fok.transitions]
    assert not [f for f in fills if f["order_id"] == fok.order_id]
