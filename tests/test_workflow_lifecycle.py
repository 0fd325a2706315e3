"""Order lifecycle against the simulated venue in Redis: faults, unknown outcomes, time in force,
cancel and amend by signal and by update, races with fills. Real Temporal dev server."""
import asyncio
import json
import time
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from temporalio.client import WorkflowUpdateFailedError

from activities.venues.simulated import FAULTS_KEY
from config.settings import SimulationSettings
from temporalio.service import RPCError, RPCStatusCode

from oms import venue_model
from oms.markets import simulated_market
from oms.models import OrderSnapshot, OrderState
from tests.helpers import executions, local_activity_calls, make_signal, run_order, start_order

S = OrderState


def states(snap: OrderSnapshot) -> list[str]:
    return [t.state.value for t in snap.transitions]


async def venue_orders(redis, client_order_id: str) -> list[dict]:
    keys = [k async for k in redis.scan_iter(f"sim:simulation:order:{client_order_id}*")]
    return [json.loads(await redis.get(k)) for k in keys]


async def wait_for_state(handle, wanted: set[OrderState], timeout: float = 20) -> OrderSnapshot:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        snap = await handle.query("status", result_type=OrderSnapshot)
        if snap.state in wanted:
            return snap
        assert asyncio.get_running_loop().time() < deadline, f"stuck in {snap.state}: {states(snap)}"
        await asyncio.sleep(0.05)


def touch(symbol: str, side: str) -> Decimal:
    bid, ask = venue_model.top_of_book(symbol, datetime.now(timezone.utc), SimulationSettings())
    return ask if side == "buy" else bid


async def test_venue_rejection_is_final_and_not_retried(temporal_env, order_worker, task_queue, redis):
    await redis.hset(FAULTS_KEY, "reject_next", 1)
    snap = await run_order(temporal_env.client, task_queue, make_signal())
    assert snap.state == S.REJECTED and "simulated rejection" in snap.reason
    assert states(snap) == ["created", "validated", "submitted", "rejected"]
    calls = await local_activity_calls(temporal_env.client.get_workflow_handle(snap.order_id))
    assert [c for c in calls if c[0].startswith("venue_")] == [("venue_submit", "VenueRejected")]  # no retry
    assert await venue_orders(redis, snap.client_order_id) == []


async def test_lost_acknowledgement_is_reconciled_to_the_one_order_placed(temporal_env, order_worker, task_queue, redis):
    await redis.hset(FAULTS_KEY, "lost_ack_next", 1)
    snap = await run_order(temporal_env.client, task_queue, make_signal(quantity="0.2"))
    assert snap.state == S.FILLED
    assert states(snap) == ["created", "validated", "submitted", "unknown", "filled"]
    assert len(await venue_orders(redis, snap.client_order_id)) == 1
    fills = await executions(redis)
    assert sum(Decimal(f["quantity"]) for f in fills) == Decimal("0.2")


async def test_venue_that_never_answers_times_out_to_unknown_not_to_a_second_order(
        temporal_env, order_worker, task_queue, redis):
    await redis.hset(FAULTS_KEY, "hang_next", 1)  # the order is placed, then the call hangs
    snap = await run_order(temporal_env.client, task_queue, make_signal(quantity="0.2"))
    assert "unknown" in states(snap) and snap.state == S.FILLED
    assert "submit outcome unknown" in next(t.reason for t in snap.transitions if t.state == S.UNKNOWN)
    assert len(await venue_orders(redis, snap.client_order_id)) == 1


async def test_ioc_fills_what_is_there_and_expires_the_rest(temporal_env, order_worker, task_queue, fast_settings):
    # 60 ETH at the touch: the first book level holds ~50 ETH, the rest is beyond the limit.
    price = touch("ETH/USDT", "buy") * Decimal("1.00002")
    price = price.quantize(Decimal("0.01"))
    snap = await run_order(temporal_env.client, task_queue, make_signal(
        quantity="60", order_type="limit", limit_price=str(price), time_in_force="IOC"))
    assert snap.state == S.EXPIRED, states(snap)
    assert Decimal(0) < snap.filled_quantity < Decimal(60)


async def test_fok_without_enough_liquidity_expires_without_any_fill(temporal_env, order_worker, task_queue):
    # ETH/BTC: 10 levels of ~20 ETH; 250 ETH (about 750k USDT, inside max_order_value) cannot fill at once.
    snap = await run_order(temporal_env.client, task_queue, make_signal(
        symbol="ETH/BTC", quantity="250", time_in_force="FOK", reference_price="0.05"))
    assert snap.state == S.EXPIRED and snap.filled_quantity == 0
    assert "FOK" in snap.reason


async def test_market_order_is_collared_by_max_slippage(temporal_env, order_worker, task_queue):
    # A reference price far below the market: nothing may execute beyond max_slippage_bps of it.
    mid = touch("ETH/USDT", "buy")
    snap = await run_order(temporal_env.client, task_queue, make_signal(
        quantity="0.1", reference_price=str((mid * Decimal("0.98")).quantize(Decimal("0.01")))))
    assert snap.state == S.EXPIRED and snap.filled_quantity == 0


async def test_cancel_by_signal_while_resting(temporal_env, order_worker, task_queue):
    handle = await start_order(temporal_env.client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("cancel", {"reason": "strategy flat"})
    await handle.signal("cancel", {"reason": "delivered twice"})  # idempotent
    snap = await handle.result()
    assert snap.state == S.CANCELLED and snap.reason == "strategy flat"
    assert states(snap).count("pending_cancel") == 1


async def test_cancel_before_submission_needs_no_venue(temporal_env, order_worker, task_queue, redis):
    start_at = datetime.now(timezone.utc) + timedelta(hours=1)
    signal = make_signal(execution={"start_at": start_at.isoformat()})
    handle = await start_order(temporal_env.client, task_queue, signal)
    await wait_for_state(handle, {S.VALIDATED})
    snap = await handle.execute_update("cancel_order", {"reason": "changed my mind"}, result_type=OrderSnapshot)
    assert snap.state == S.CANCELLED and "submitted" not in states(snap)
    await handle.result()
    assert [c for c in await local_activity_calls(handle) if c[0].startswith("venue_")] == []
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == []


async def test_amend_by_signal_and_by_update_with_refusals(temporal_env, order_worker, task_queue):
    handle = await start_order(temporal_env.client, task_queue,
                               make_signal(order_type="limit", limit_price="1000.00", quantity="0.1"))
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("amend", {"limit_price": "1001.00"})
    for _ in range(100):
        snap = await handle.query("status", result_type=OrderSnapshot)
        if snap.limit_price == Decimal("1001.00") and snap.state == S.ACCEPTED:
            break
        await asyncio.sleep(0.05)
    assert snap.limit_price == Decimal("1001.00") and snap.state == S.ACCEPTED and "pending_amend" in states(snap)
    snap = await handle.execute_update("amend_order", {"quantity": "0.3"}, result_type=OrderSnapshot)
    assert snap.quantity == Decimal("0.3") and snap.state == S.ACCEPTED
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("amend_order", {"limit_price": "1000.001"}, result_type=OrderSnapshot)
    assert "tick size" in str(refused.value.cause)
    await handle.execute_update("cancel_order", {}, result_type=OrderSnapshot)
    await handle.result()
    with pytest.raises(RPCError) as closed:  # terminal and closed: the server refuses the update
        await handle.execute_update("amend_order", {"quantity": "1"}, result_type=OrderSnapshot)
    assert closed.value.status == RPCStatusCode.NOT_FOUND, closed.value


async def test_amend_below_filled_quantity_is_refused(temporal_env, order_worker, task_queue):
    # 60 ETH GTC at the touch: ~50 fill at once, the rest rests.
    price = (touch("ETH/USDT", "buy") * Decimal("1.00002")).quantize(Decimal("0.01"))
    handle = await start_order(temporal_env.client, task_queue, make_signal(
        quantity="60", order_type="limit", limit_price=str(price)))
    snap = await wait_for_state(handle, {S.PARTIALLY_FILLED, S.FILLED})
    if snap.state == S.FILLED:
        pytest.skip("the price path filled the whole order at once")
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("amend_order", {"quantity": str(snap.filled_quantity)}, result_type=OrderSnapshot)
    assert "not above the filled quantity" in str(refused.value.cause)
    final = await handle.execute_update("cancel_order", {}, result_type=OrderSnapshot)
    assert final.state == S.CANCELLED and final.filled_quantity >= snap.filled_quantity


def crossing_limit(symbol: str, earliest_s: int, latest_s: int) -> tuple[str, Decimal, float]:
    """(side, limit price, wall time): a limit order that rests now and that the deterministic price
    path (the emulator's and the simulation's) crosses between `earliest_s` and `latest_s` from now."""
    from tests.test_direct_execution import SIM

    now = datetime.now(timezone.utc)
    tick = simulated_market(symbol).price_step

    def book(seconds: int) -> tuple[Decimal, Decimal]:
        return venue_model.top_of_book(symbol, now + timedelta(seconds=seconds), SIM)

    soon, later = range(0, earliest_s), range(earliest_s, latest_s + 1)
    candidates = []
    for k in later:  # the first second at which a buy (or sell) limit would cross for the first time
        price = (book(k)[1] // tick) * tick + tick  # buy at the ask then: crosses at k
        if all(book(j)[1] > price for j in soon):
            when = next(j for j in later if book(j)[1] <= price)
            candidates.append(("buy", price, when))
        price = (book(k)[0] // tick) * tick  # sell at the bid then
        if all(book(j)[0] < price for j in soon):
            when = next(j for j in later if book(j)[0] >= price)
            candidates.append(("sell", price, when))
    assert candidates, f"the price path does not move between {earliest_s} and {latest_s} s from now"
    side, price, when = min(candidates, key=lambda c: c[2])
    return side, price, now.timestamp() + when


@asynccontextmanager
async def direct_race_worker(temporal_env, stack_settings, emulators, redis):
    """A production worker in direct mode against the Binance emulator. Its poller runs but polls
    once at start only (poll_interval_ms 600 s) and the order's own first poll is minutes away, so
    nothing but the cancel itself learns of the fill: the race is between the two at the venue."""
    from tests.conftest import direct_settings
    from workers.worker import running_worker

    settings = direct_settings(stack_settings, emulators, ("binance",), direct={"poll_interval_ms": 600_000},
                               orders={"execution_timeout_ms": 30_000}, timeout_ms=30_000, recv_window_ms=40_000)
    async with running_worker(temporal_env.client, settings, redis):
        yield settings


async def _resting_crossing_order(temporal_env, task_queue, earliest_s: int, latest_s: int):
    side, price, fills_at = crossing_limit("ETH/USDT", earliest_s, latest_s)
    handle = await start_order(temporal_env.client, task_queue, make_signal(
        quantity="0.01", side=side, order_type="limit", limit_price=str(price), exchange="binance"))
    accepted = await wait_for_state(handle, {S.ACCEPTED, S.FILLED}, timeout=60)
    assert accepted.state == S.ACCEPTED and time.time() < fills_at, "placed too late to race the crossing"
    return handle, fills_at


async def test_cancel_racing_a_fill_fill_wins_at_the_venue(temporal_env, stack_settings, emulators, redis,
                                                          task_queue):
    """The cancel reaches the workflow before the fill and is sent, but the venue holds it (a `slow`
    fault on cancel) until after the price path filled the order: the venue answers with the fill,
    which stands (late fills after a cancel are legal) and is counted once."""
    emulator = emulators["binance"]
    async with direct_race_worker(temporal_env, stack_settings, emulators, redis):
        handle, fills_at = await _resting_crossing_order(temporal_env, task_queue, 3, 12)
        hold_ms = int((fills_at - time.time() + 1.5) * 1000)
        emulator.fault(kind="slow", endpoints=["cancel"], count=1, delay_ms=hold_ms)
        cancel_sent = datetime.now(timezone.utc)
        await handle.signal("cancel", {"reason": "too late"})
        snap = await asyncio.wait_for(handle.result(), 60)
        calls = await local_activity_calls(handle)
    assert snap.state == S.FILLED and snap.filled_quantity == Decimal("0.01"), states(snap)
    assert states(snap)[-2:] == ["pending_cancel", "filled"]  # the cancel went out, the fill came back
    assert ("venue_cancel", None) in calls  # the venue answered the cancel (with the filled order)
    [venue_order] = [o for o in emulator.orders() if o["client_order_id"] == snap.client_order_id]
    assert venue_order["status"] == "filled" and emulator.stats()["by_class"]["cancel"] >= 1
    assert emulator.admin("GET", "faults")["faults"] == []  # the hold fired
    fills = [f for f in await executions(redis) if f["order_id"] == snap.order_id]
    assert sum((Decimal(f["quantity"]) for f in fills), Decimal(0)) == snap.filled_quantity
    assert len({f["fill_id"] for f in fills}) == len(fills)
    assert all(datetime.fromisoformat(f["at"]) > cancel_sent for f in fills)  # filled after the cancel was sent


async def test_cancel_racing_a_fill_cancel_wins_at_the_venue(temporal_env, stack_settings, emulators, redis,
                                                            task_queue):
    """The same crossing order, its cancel sent at once: the venue cancels it before the price path
    reaches the limit, and once the path has crossed it still holds no fill."""
    emulator = emulators["binance"]
    async with direct_race_worker(temporal_env, stack_settings, emulators, redis):
        handle, fills_at = await _resting_crossing_order(temporal_env, task_queue, 6, 20)
        snap = await handle.execute_update("cancel_order", {"reason": "in time"}, result_type=OrderSnapshot)
        cancelled_at = time.time()
        calls = await local_activity_calls(handle)
    assert cancelled_at < fills_at, "the cancel did not beat the crossing: the race was not run"
    assert snap.state == S.CANCELLED and snap.filled_quantity == 0 and snap.reason == "in time"
    assert states(snap)[-2:] == ["pending_cancel", "cancelled"] and ("venue_cancel", None) in calls
    await asyncio.sleep(fills_at - time.time() + 1.2)  # the path has now crossed the limit
    [venue_order] = [o for o in emulator.orders() if o["client_order_id"] == snap.client_order_id]
    assert venue_order["status"] == "cancelled" and venue_order["fills"] == []
    assert [f for f in await executions(redis) if f["order_id"] == snap.order_id] == []


async def test_daily_order_limit_holds_across_concurrent_orders(temporal_env, redis, task_queue, fast_settings):
    from workers.worker import running_worker

    limits = fast_settings.account_limits.model_dump(mode="json")
    capped = fast_settings.with_overrides(account_limits={**limits, "max_daily_orders": 5})
    async with running_worker(temporal_env.client, capped, redis):
        snaps = await asyncio.gather(*(run_order(temporal_env.client, task_queue, make_signal()) for _ in range(8)))
    denied = [s for s in snaps if s.state == S.DENIED]
    assert len(denied) == 3 and all("daily_order_limit" in s.reason for s in denied)


async def test_orders_that_never_go_out_do_not_use_up_the_daily_cap(temporal_env, redis, task_queue, fast_settings):
    """The cap's slot is taken while the order is prepared; a denied or cancelled-before-submission
    order gives it back, so only orders that reached the venue count."""
    from workers.worker import running_worker

    limits = fast_settings.account_limits.model_dump(mode="json")
    capped = fast_settings.with_overrides(account_limits={**limits, "max_daily_orders": 2, "max_order_value": 1000})
    async with running_worker(temporal_env.client, capped, redis):
        too_big = await run_order(temporal_env.client, task_queue, make_signal(quantity="1"))  # ~3000 USDT
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        handle = await start_order(temporal_env.client, task_queue, make_signal(execution={"start_at": later.isoformat()}))
        await wait_for_state(handle, {S.VALIDATED})
        await handle.signal("cancel", {"reason": "changed my mind"})
        waiting = await handle.result()
        sent = await asyncio.gather(*(run_order(temporal_env.client, task_queue, make_signal()) for _ in range(3)))
    assert too_big.state == S.DENIED and "above_max_order_value" in too_big.reason
    assert waiting.state == S.CANCELLED
    assert sorted(s.state.value for s in sent) == ["denied", "filled", "filled"]
