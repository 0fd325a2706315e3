"""Every venue answer and every operator action ends well (issue 12), one defect per test, on the
time-skipping server against the scripted venue (tests/scripted_venue.py): no task failure, no
frozen, looping or stranded order."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from decimal import Decimal

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError

import workflows.order as order_module
from activities.publish import ANOMALIES_KEY
from activities.placement import order_to_place
from oms.models import OrderSnapshot, OrderState, client_order_id_for
from oms.venue import VenueFill, VenueOrderStatus
from tests.helpers import local_activity_calls, make_signal
from tests.model_support import (SKIP_RPC_TIMEOUT_S, ScriptedWorkers, chain_histories, failed_workflow_tasks,
                                 settle, skip_time)
from tests.scripted_venue import ScriptedVenue, Step
from tests.test_workflow_lifecycle import wait_for_state

S = OrderState
RESULT_TIMEOUT = SKIP_RPC_TIMEOUT_S  # wall-clock seconds for an order's end, on the same grounds


@pytest.fixture(autouse=True)
def quiet_activity_errors():
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)


@pytest_asyncio.fixture
async def scripted(time_env, redis, fast_settings, task_queue):
    """start(venue, current_rules=False, **signal fields) -> (handle, workers): an order on a scripted
    venue (a release-0.1 context unless current_rules: see scripted_context)."""
    started: list[ScriptedWorkers] = []

    async def start(venue: ScriptedVenue, current_rules: bool = False, **fields):
        workers = ScriptedWorkers(time_env.client, task_queue, venue, fast_settings, redis, current_rules=current_rules)
        await workers.start()
        started.append(workers)
        signal = make_signal(symbol="BTC/USDT", quantity=fields.pop("quantity", "1.00"), **fields)
        handle = await time_env.client.start_workflow(
            "OrderWorkflow", signal, id=signal.workflow_id, task_queue=task_queue, result_type=OrderSnapshot)
        return handle, workers

    yield start
    for workers in started:
        await workers.stop()


def limit(**more) -> dict:
    return {"order_type": "limit", "limit_price": "100.00", **more}


async def finish(time_env, handle) -> OrderSnapshot:
    snap = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    runs = await chain_histories(time_env.client, handle.id, handle.first_execution_run_id)
    assert failed_workflow_tasks(runs) == []
    return snap


@contextlib.asynccontextmanager
async def accepted_with_slow_calls(time_env, redis, fast_settings, task_queue, venue: ScriptedVenue):
    """An accepted limit order on `venue`, whose calls may take 30 s before they time out (so a
    held call outlives its workflow task, and a workflow cancellation can interrupt it)."""
    workers = ScriptedWorkers(time_env.client, task_queue, venue, fast_settings, redis, execution_timeout_ms=30_000)
    await workers.start()
    try:
        signal = make_signal(symbol="BTC/USDT", quantity="1.00", **limit())
        handle = await time_env.client.start_workflow(
            "OrderWorkflow", signal, id=signal.workflow_id, task_queue=task_queue, result_type=OrderSnapshot)
        await wait_for_state(handle, {S.ACCEPTED})
        yield handle
    finally:
        await workers.stop()


async def until(condition, failure: str, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, failure
        await asyncio.sleep(0.05)


def venue_order(venue: ScriptedVenue, handle, generation: int = 0):
    return venue.orders[client_order_id_for(handle.id, generation)]


# --- transitions the table lacked ---------------------------------------------------------------------
async def test_a_refused_cancel_and_replace_replacement_ends_rejected(time_env, scripted):
    """Release 0.1's rule (a context without prices): the order ends rejected with nothing live."""
    venue = ScriptedVenue(native_amend=False)
    venue.queue("submit", Step(), Step(outcome="refused"))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("amend_order", {"quantity": "2.00"}, result_type=OrderSnapshot)
    snap = await finish(time_env, handle)
    assert snap.state == S.REJECTED and "refused" in snap.reason
    assert venue.violations == [] and not venue.live_orders(client_order_id_for(handle.id))


async def test_a_refused_cancel_and_replace_replacement_places_the_original_terms_again(time_env, scripted):
    """Today's rule: the working order is not dropped. Its original terms go out again under the
    next client order id, the amend answers with the refusal, and the order can still be cancelled."""
    venue = ScriptedVenue(native_amend=False)
    venue.queue("submit", Step(), Step(outcome="refused"))
    handle, _ = await scripted(venue, current_rules=True, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("amend_order", {"quantity": "2.00"}, result_type=OrderSnapshot)
    assert "placed again at its original terms" in str(refused.value.cause)
    snap = await handle.query("status", result_type=OrderSnapshot)
    assert snap.state == S.ACCEPTED and snap.quantity == Decimal("1.00"), snap.transitions
    assert snap.client_order_id == client_order_id_for(handle.id, 2)
    live = venue.live_orders(client_order_id_for(handle.id))
    assert [(o.quantity, o.limit_price) for o in live] == [(Decimal("1.00"), Decimal("100.00"))]
    assert venue.calls["submit"] == 3
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED
    assert venue.violations == [] and not venue.live_orders(client_order_id_for(handle.id))


async def test_a_late_rejection_after_acceptance_ends_rejected(time_env, scripted):
    """QuantConnect's `invalid` after its acknowledgement, pushed by the account poller."""
    venue = ScriptedVenue()
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    order = venue_order(venue, handle)
    order.status = VenueOrderStatus.REJECTED
    await handle.signal("venue_update", venue.report(order))
    snap = await finish(time_env, handle)
    assert snap.state == S.REJECTED


async def test_an_amend_before_the_acknowledgement_settles(time_env, scripted):
    """The submit's answer says partially filled without listing the trades: still a live order
    that takes an amend, then a cancel, with its fills."""
    venue = ScriptedVenue()
    venue.queue("submit", Step(after=lambda v, o: v.fill(o, Decimal("0.40")), fills_complete=False))
    handle, _ = await scripted(venue, **limit())
    await asyncio.sleep(0.3)  # the submit has been answered
    await handle.signal("amend", {"quantity": "2.00"})
    await asyncio.sleep(0.3)
    await wait_for_state(handle, {S.ACCEPTED, S.PARTIALLY_FILLED})
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and snap.filled_quantity == Decimal("0.40") and snap.quantity == Decimal("2.00")


async def test_an_unforeseen_outcome_is_recorded_counted_and_reconciled(time_env, scripted, redis):
    """A venue reporting more filled than ordered: the fill cannot be taken. The workflow task does
    not fail; the order records it (anomalies, last_anomaly, a transition to unknown with the reason),
    the metric counts it, and the order reconciles on backoff timers."""
    venue = ScriptedVenue()
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    order = venue_order(venue, handle)
    order.quantity = Decimal("1.20")  # the venue's book disagrees with ours
    venue.fill(order)
    await handle.signal("venue_update", venue.report(order))
    snap = await wait_for_state(handle, {S.UNKNOWN})
    assert snap.anomalies >= 1 and "past the order" in snap.last_anomaly
    assert any(t.state == S.UNKNOWN and "unforeseen outcome" in (t.reason or "") for t in snap.transitions)
    assert int((await redis.hgetall(ANOMALIES_KEY))["scripted"]) >= 1
    assert await settle(time_env.client, handle.id, handle.first_execution_run_id, RESULT_TIMEOUT), "never rested"
    runs = await chain_histories(time_env.client, handle.id, handle.first_execution_run_id)
    assert failed_workflow_tasks(runs) == []
    await handle.terminate("end of test")


# --- Temporal cancellation ----------------------------------------------------------------------------
async def test_workflow_cancellation_cancels_at_the_venue_with_the_fills(time_env, scripted):
    venue = ScriptedVenue()
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    venue.fill(venue_order(venue, handle), Decimal("0.30"))
    await handle.cancel()
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and snap.filled_quantity == Decimal("0.30")
    assert venue_order(venue, handle).status == VenueOrderStatus.CANCELLED
    description = await handle.describe()
    assert description.status.name == "COMPLETED"
    assert description.search_attributes["OrderState"] == ["cancelled"]


async def test_workflow_cancellation_racing_a_fill_ends_filled(time_env, scripted):
    venue = ScriptedVenue()
    venue.queue("cancel", Step(effect=lambda v, o: v.fill(o)))  # the venue filled it before the cancel
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.cancel()
    snap = await finish(time_env, handle)
    assert snap.state == S.FILLED and snap.filled_quantity == Decimal("1.00")


@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_workflow_cancellation_during_a_venue_call_reconciles_then_cancels(time_env, scripted, current_rules):
    venue = ScriptedVenue()
    venue.queue("submit", Step(delay_s=1.0))
    handle, _ = await scripted(venue, current_rules=current_rules, **limit())
    await asyncio.sleep(0.4)  # the submit is at the venue
    await handle.cancel()
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED
    assert not venue.live_orders(client_order_id_for(handle.id))


# --- continue-as-new with handlers in flight ------------------------------------------------------------
async def test_continue_as_new_with_cancel_and_amend_updates_in_flight(time_env, scripted, monkeypatch):
    monkeypatch.setattr(order_module, "HISTORY_BOUND", 20)
    venue = ScriptedVenue()
    venue.queue("cancel", *[Step(outcome="lost_before") for _ in range(4)])
    venue.queue("amend", Step(delay_s=0.5))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    amend = asyncio.create_task(handle.execute_update("amend_order", {"limit_price": "99.50"},
                                                      result_type=OrderSnapshot))
    await asyncio.sleep(0.2)  # the amend is at the venue (0.5 s) when the cancel arrives
    cancel = asyncio.create_task(handle.execute_update("cancel_order", {"reason": "test"}, result_type=OrderSnapshot))
    latest = time_env.client.get_workflow_handle(handle.id, result_type=OrderSnapshot)
    snap = await asyncio.wait_for(latest.result(), RESULT_TIMEOUT)
    amended, cancelling = await asyncio.wait_for(asyncio.gather(amend, cancel), 30)
    assert snap.state == S.CANCELLED
    assert amended.limit_price == Decimal("99.50")
    assert cancelling.state in (S.PENDING_CANCEL, S.UNKNOWN, S.CANCELLED)
    runs = await chain_histories(time_env.client, handle.id, handle.first_execution_run_id)
    assert len(runs) >= 2 and failed_workflow_tasks(runs) == []


# --- no hot loops ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_a_cancel_that_does_not_take_is_retried_on_backoff_timers(time_env, scripted, fast_settings, current_rules):
    venue = ScriptedVenue()
    venue.queue("cancel", *[Step(outcome="ignore") for _ in range(1000)])
    handle, _ = await scripted(venue, current_rules=current_rules, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("cancel", {"reason": "test"})
    await asyncio.sleep(0.5)
    await skip_time(time_env, timedelta(hours=1))
    # 0.1 s doubling to the 5-minute cap, jittered: ~12 retries to reach it, then one per 150-300 s.
    assert 10 <= venue.calls["cancel"] <= 40, venue.calls
    snap = await handle.query("status", result_type=OrderSnapshot)
    assert snap.venue_requests == venue.requests[client_order_id_for(handle.id)]
    venue.script["cancel"].clear()  # the venue cancels at last
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED


@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_an_unknown_order_is_looked_up_on_backoff_timers(time_env, scripted, fast_settings, current_rules):
    venue = ScriptedVenue()
    venue.queue("submit", Step(outcome="lost_after"))
    venue.queue("fetch", *[Step(outcome="transient") for _ in range(1000)])
    handle, _ = await scripted(venue, current_rules=current_rules, **limit())
    await wait_for_state(handle, {S.UNKNOWN})
    await skip_time(time_env, timedelta(hours=1))
    per_look = fast_settings.orders.retry_attempts + 1  # each look retries transient errors itself
    assert venue.calls["fetch"] <= 40 * per_look, venue.calls
    venue.script["fetch"].clear()
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and venue.calls["submit"] == 1


# --- reconciliation shortcuts ---------------------------------------------------------------------------
async def test_not_found_while_cancelling_waits_out_the_receive_window(time_env, scripted):
    """The submit timed out while still in flight; with a cancel requested, the look-up finds nothing
    yet. The order lands a moment later: it is found after the receive window and cancelled, not
    left live (nor the order ended `cancelled` while its submit was still on the way)."""
    venue = ScriptedVenue()
    venue.queue("submit", Step(outcome="delayed", delay_s=0.5, lands_after=3))
    venue.queue("fetch", Step(outcome="transient"))  # a first look that fails: the cancel is seen by the next
    handle, _ = await scripted(venue, **limit())
    await asyncio.sleep(0.1)
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    venue.land_in_flight()
    assert snap.state == S.CANCELLED
    assert client_order_id_for(handle.id) in venue.orders, "the delayed order should have landed"
    assert not venue.live_orders(client_order_id_for(handle.id))


@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_an_expiry_whose_cancel_answer_was_lost_ends_expired(time_env, scripted, current_rules):
    venue = ScriptedVenue()
    venue.queue("cancel", Step(outcome="lost_after"))
    now = await time_env.get_current_time()
    handle, _ = await scripted(venue, current_rules=current_rules, **limit(time_in_force="GTD", expire_at=(now + timedelta(minutes=5)).isoformat()))
    snap = await finish(time_env, handle)
    assert snap.state == S.EXPIRED, snap.transitions
    assert S.UNKNOWN in [t.state for t in snap.transitions]


@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_an_expired_order_never_seen_by_the_venue_is_not_resubmitted(time_env, scripted, current_rules):
    venue = ScriptedVenue()
    venue.queue("submit", Step(outcome="lost_before"))
    venue.queue("fetch", *[Step(outcome="transient") for _ in range(60)])  # the venue is away past expire_at
    now = await time_env.get_current_time()
    handle, _ = await scripted(venue, current_rules=current_rules, **limit(time_in_force="GTD", expire_at=(now + timedelta(seconds=30)).isoformat()))
    snap = await finish(time_env, handle)
    assert snap.state == S.EXPIRED
    assert venue.calls["submit"] == 1 and venue.orders == {}


async def test_cancel_and_replace_confirms_the_old_order_ended_before_placing_the_new(time_env, scripted):
    """The cancel is acknowledged while the old order still rests, then it ends with a late fill:
    the replacement goes out only after that, for what is left, and never beside a live order."""
    venue = ScriptedVenue(native_amend=False)

    def ends_with_a_late_fill(v, o):
        v.fill(o, Decimal("0.30"))
        v.end(o)

    venue.queue("cancel", Step(outcome="ignore"))
    venue.queue("fetch", Step(effect=ends_with_a_late_fill))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    amended = await handle.execute_update("amend_order", {"quantity": "2.00"}, result_type=OrderSnapshot)
    assert venue.violations == []
    replacement = venue_order(venue, handle, generation=1)
    assert replacement.quantity == Decimal("1.70") and replacement.live
    assert amended.filled_quantity == Decimal("0.30") and amended.quantity == Decimal("2.00")
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and snap.filled_quantity == Decimal("0.30")


# --- a terminal venue status with partial fills -------------------------------------------------------
async def test_a_market_order_bigger_than_the_book_ends_cancelled_with_its_fills(time_env, scripted):
    """Bybit: 4.16 of 8 filled and the rest ended, which ccxt reports as `closed` (filled)."""
    venue = ScriptedVenue()

    def closed_short(v, o):
        o.status = VenueOrderStatus.NEW
        o.fills = [o.fills[0].model_copy(update={"trade_id": "b1", "quantity": Decimal("4.16")})]
        o.status = VenueOrderStatus.FILLED

    venue.queue("submit", Step(after=closed_short))
    handle, _ = await scripted(venue, quantity="8.00")
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and snap.filled_quantity == Decimal("4.16")
    assert "4.16 of 8.00" in snap.reason


async def test_a_resting_order_ended_by_the_venue_with_partial_fills_ends_with_them(time_env, scripted):
    """Pushed by the account poller without its trades: fetched, and ended with its fills."""
    venue = ScriptedVenue()
    handle, _ = await scripted(venue, **limit(quantity="8.00"))
    await wait_for_state(handle, {S.ACCEPTED})
    order = venue_order(venue, handle)
    venue.fill(order, Decimal("4.16"))
    venue.end(order, VenueOrderStatus.EXPIRED)
    await handle.signal("venue_update", venue.report(order, fills_complete=False))
    snap = await finish(time_env, handle)
    assert snap.state == S.EXPIRED and snap.filled_quantity == Decimal("4.16")


# --- a cancel arriving while the order fills ------------------------------------------------------------
@pytest.mark.parametrize("current_rules", [False, True], ids=["release-0.1-context", "placed-when-prepared"])
async def test_a_cancel_arriving_during_the_fill_never_hides_it(time_env, scripted, current_rules):
    """A market order fills at the venue while a cancel signal arrives. The run must not close in
    the workflow task that holds the venue's answer: the server would refuse it (a new signal), drop
    the answer, and the retry would decide "cancelled before submission" over a filled order."""
    venue = ScriptedVenue()
    venue.queue("submit", Step(delay_s=0.5))
    handle, _ = await scripted(venue, current_rules=current_rules)
    await asyncio.sleep(0.25)
    await handle.signal("cancel", {"reason": "too late"})
    snap = await finish(time_env, handle)
    assert venue.filled(client_order_id_for(handle.id)) == Decimal("1.00")
    assert snap.state == S.FILLED and snap.filled_quantity == Decimal("1.00")


@pytest.mark.parametrize("status", [VenueOrderStatus.NOT_FOUND, VenueOrderStatus.UNRECOGNIZED])
async def test_a_status_the_workflow_does_not_expect_is_reconciled(time_env, scripted, status):
    """A cancel answered with a status no rule expects there ("not found" as a report, a status no
    venue table knows): the order is reconciled, not frozen or failed."""
    venue = ScriptedVenue()

    def answers_not_found(v, o):
        o.status = status

    def found_cancelled(v, o):
        o.status = VenueOrderStatus.CANCELLED

    venue.queue("cancel", Step(outcome="ignore", effect=answers_not_found))
    venue.queue("fetch", Step(effect=found_cancelled))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED
    unknown = [t for t in snap.transitions if t.state == S.UNKNOWN]
    assert unknown and status.value in unknown[0].reason


async def test_workflow_cancellation_during_a_venue_call_longer_than_its_task_is_not_a_venue_error(
        time_env, redis, fast_settings, task_queue):
    """An amend the venue holds for 14 s outlives its workflow task (the SDK starts a new task
    meanwhile), so a Temporal cancellation interrupts the call itself. That is the cancellation, not
    an amend that failed: the order is cancelled at the venue, never left working unwatched."""
    venue = ScriptedVenue()
    venue.queue("amend", Step(delay_s=14.0))
    async with accepted_with_slow_calls(time_env, redis, fast_settings, task_queue, venue) as handle:
        amend = asyncio.create_task(handle.execute_update("amend_order", {"limit_price": "99.00"},
                                                          result_type=OrderSnapshot))
        await until(lambda: venue.calls["amend"] > 0, "the amend never reached the venue")
        await handle.cancel()
        snap = await finish(time_env, handle)
        with pytest.raises(WorkflowUpdateFailedError):
            await amend  # it never applied: the order ended first
    assert snap.state == S.CANCELLED, snap.transitions
    assert not venue.live_orders(client_order_id_for(handle.id))
    assert "interrupted by the workflow cancellation" in " ".join(t.reason or "" for t in snap.transitions)


# --- an amend whose answer was lost ---------------------------------------------------------------------
async def test_an_amend_that_took_with_its_answer_lost_counts_the_fills_past_the_old_quantity(time_env, scripted):
    """The venue raised the quantity to 2.00 and filled 1.50, and the amend's answer was lost. The
    order reconciles, finds the venue holding the amended terms, takes them, and counts every fill;
    with the old quantity (1.00) it would refuse the 1.50 the venue made."""
    venue = ScriptedVenue()
    venue.queue("amend", Step(outcome="lost_after", after=lambda v, o: v.fill(o, Decimal("1.50"))))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("amend", {"quantity": "2.00"})
    await wait_for_state(handle, {S.PARTIALLY_FILLED})
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert venue.calls["amend"] == 1
    assert (snap.state, snap.quantity, snap.filled_quantity) == (S.CANCELLED, Decimal("2.00"), Decimal("1.50"))
    assert snap.anomalies == 0, snap.last_anomaly


async def test_an_amend_that_did_not_take_with_its_answer_lost_keeps_the_old_terms(time_env, scripted):
    """The amend's request was lost before the venue saw it: the reconciled order keeps its terms,
    and its fill is counted against them."""
    venue = ScriptedVenue()
    venue.queue("amend", Step(outcome="lost_before"))
    handle, _ = await scripted(venue, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    await handle.signal("amend", {"quantity": "2.00", "limit_price": "99.00"})
    venue.fill(venue_order(venue, handle), Decimal("0.40"))
    await wait_for_state(handle, {S.PARTIALLY_FILLED})
    await handle.signal("cancel", {"reason": "test"})
    snap = await finish(time_env, handle)
    assert venue_order(venue, handle).quantity == Decimal("1.00")
    assert (snap.quantity, snap.limit_price, snap.filled_quantity) == (Decimal("1.00"), Decimal("100.00"),
                                                                         Decimal("0.40"))
    assert snap.state == S.CANCELLED and snap.anomalies == 0, snap.last_anomaly


async def test_workflow_cancellation_while_a_taken_amend_is_answered_counts_every_fill(
        time_env, redis, fast_settings, task_queue):
    """The venue took the amend (quantity 2.00) and filled 1.50 of it; its answer is still on the way
    when a Temporal cancellation interrupts the call. The order cannot know which terms the venue
    holds until it looks: it reconciles, takes the amended terms, counts the 1.50 and cancels the rest."""
    venue = ScriptedVenue()
    venue.queue("amend", Step(after=lambda v, o: v.fill(o, Decimal("1.50")), answer_after_s=14.0))
    async with accepted_with_slow_calls(time_env, redis, fast_settings, task_queue, venue) as handle:
        await handle.signal("amend", {"quantity": "2.00"})
        # The venue took the amend and filled part of it; its answer is held.
        await until(lambda: venue_order(venue, handle).filled > 0, "the amend never reached the venue")
        await handle.cancel()
        snap = await finish(time_env, handle)
    assert (snap.state, snap.quantity, snap.filled_quantity) == (S.CANCELLED, Decimal("2.00"), Decimal("1.50"))
    assert snap.anomalies == 0, snap.last_anomaly
    assert not venue.live_orders(client_order_id_for(handle.id))


# --- preparation that places the order (prepare_and_place) ----------------------------------------------
async def test_a_cancel_arriving_while_preparation_places_the_order_cancels_it_at_the_venue(time_env, scripted):
    """The cancel arrives while the one activity that prepares and places is at the venue: the order
    is there, so it is cancelled there, not ended "before submission" over a live venue order."""
    venue = ScriptedVenue()
    venue.queue("submit", Step(delay_s=0.5))
    handle, _ = await scripted(venue, current_rules=True, **limit())
    await asyncio.sleep(0.25)
    await handle.signal("cancel", {"reason": "changed my mind"})
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED
    assert [t.state for t in snap.transitions][:4] == [S.CREATED, S.VALIDATED, S.SUBMITTED, S.ACCEPTED]
    assert venue.calls["submit"] == 1 and venue.calls["cancel"] == 1
    assert not venue.live_orders(client_order_id_for(handle.id))


@pytest.mark.parametrize("outcome", ["ok", "transient"])
async def test_workflow_cancellation_while_preparation_places_waits_for_the_venues_answer(
        time_env, redis, fast_settings, task_queue, outcome):
    """A Temporal cancellation while prepare_and_place is held at the venue for 12 s (longer than its
    workflow task, so the cancellation arrives during the call): the answer is waited for, then
    acted on. Placed: the order is cancelled at the venue. A refused connection: it ends cancelled
    at once, the submission never retried."""
    venue = ScriptedVenue()
    venue.queue("submit", Step(outcome=outcome, delay_s=12.0))
    workers = ScriptedWorkers(time_env.client, task_queue, venue, fast_settings, redis, current_rules=True,
                              execution_timeout_ms=30_000)
    await workers.start()
    try:
        signal = make_signal(symbol="BTC/USDT", quantity="1.00", **limit())
        handle = await time_env.client.start_workflow(
            "OrderWorkflow", signal, id=signal.workflow_id, task_queue=task_queue, result_type=OrderSnapshot)
        await until(lambda: venue.calls["submit"] > 0, "the submission never reached the venue")
        await handle.cancel()
        snap = await finish(time_env, handle)
    finally:
        await workers.stop()
    states = [t.state for t in snap.transitions]
    assert snap.state == S.CANCELLED and S.UNKNOWN not in states, [(t.state.value, t.reason) for t in snap.transitions]
    assert venue.calls["submit"] == 1
    if outcome == "ok":
        assert S.ACCEPTED in states and venue.calls["cancel"] == 1
        assert not venue.live_orders(client_order_id_for(handle.id))
    else:
        assert not venue.orders and "the venue took nothing" in snap.transitions[-1].reason


async def test_an_order_placed_against_the_workflows_own_decision_is_cancelled(time_env, scripted):
    """A worker whose preparation places an order the workflow would not (a decision that drifted
    between them): the workflow takes the venue's answer, then cancels the order there."""
    venue = ScriptedVenue()

    def drifted(signal, context, client_order_id, now):
        placement = order_to_place(signal, context, client_order_id, now)
        request = placement.request.model_copy(update={"quantity": placement.request.quantity + 1})
        return placement.model_copy(update={"request": request})

    venue.placement_rule = drifted
    handle, _ = await scripted(venue, current_rules=True, **limit())
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED
    assert "would not place" in snap.transitions[-1].reason
    assert not venue.live_orders(client_order_id_for(handle.id))


async def test_a_preparation_that_fails_is_retried_on_the_usual_path_which_a_cancellation_stops(
        time_env, scripted):
    """prepare_and_place makes one attempt. A preparation that keeps failing (market data down) is
    retried by prepare_order on durable timers, and a Temporal cancellation meanwhile ends the order
    with nothing placed: it does not wait for the venue to come back and place the order first."""
    venue = ScriptedVenue()
    venue.prepare_failures = 10_000
    handle, _ = await scripted(venue, current_rules=True, **limit())
    await until(lambda: venue.calls["prepare"] >= 3, "preparation was not retried")
    await handle.cancel()
    snap = await finish(time_env, handle)
    assert snap.state == S.CANCELLED and venue.calls["submit"] == 0 and not venue.orders


async def test_an_order_whose_first_preparation_failed_is_placed_after_it(time_env, scripted):
    venue = ScriptedVenue()
    venue.prepare_failures = 2
    handle, _ = await scripted(venue, current_rules=True, **limit())
    await wait_for_state(handle, {S.ACCEPTED})
    calls = [name for name, _ in await local_activity_calls(handle)]
    assert calls[:3] == ["prepare_order", "prepare_order", "venue_submit"], calls
    assert venue.calls["prepare"] == 3 and venue.calls["submit"] == 1
    await handle.signal("cancel", {"reason": "end of test"})
    assert (await finish(time_env, handle)).state == S.CANCELLED
