"""OrderWorkflow: one order, from signal to terminal state, durable across any worker crash.

The workflow decides; activities do I/O. Every state change goes through `oms.states.apply_safely`
/ `apply_fill` (the transition table), then `_publish` records it (search attributes, the
`order_events` / `executions` streams, the order cache). An outcome the table did not foresee never
fails a workflow task: it is recorded on the order, counted, and the order reconciles.

Venue calls are local activities (a normal activity hop costs ~45 ms on the submission path), each
attempted once per call; the retry loop is here, so the workflow chooses per error type. An order that
goes out at once is prepared and placed by one local activity (activities/placement.py): the activity
places only what `order_to_place` allows, and the workflow checks that decision on the recorded
context before it takes the venue's answer as its first submission attempt's (`_adopt_placement`):
- VenueRejected            -> rejected, never retried
- VenueTransient / RateLimited -> retried with exponential backoff (retry_attempts, retry_delay_ms)
- VenueUnknownOutcome, or no answer within execution_timeout_ms -> `unknown`, then reconciled by
  fetching the order by its client order id; only a confirmed NOT_FOUND resubmits (same client id,
  which the venue deduplicates anyway), and never for an order being cancelled or expired, whose
  NOT_FOUND is final only after the venue's receive window. Never a blind second order.
Every call the venue may need again (a cancel that did not take, a look-up) waits on a durable,
capped, jittered backoff first: no hot loops, and `venue_requests` counts them.
Cancel and amend arrive as signals, updates or a Temporal cancellation request; the main loop
carries them out, so every venue call is made from one place and a cancel racing a fill ends in
whatever the venue decided (late fills are counted). History stays bounded: long-lived orders
continue-as-new with their whole state, pending requests included.
Orders started before the `order-lifecycle-v2` patch keep release 0.1's paths (order_release01.py).
A child of a parent order (ParentOrderWorkflow) is started with a `ChildOrderInput` and signals its
parent (`child_update`) after each transition or fill it records: conditional on `parent_order_id`,
which no earlier history carries, so no patch is needed.
What the Temporal UI shows is part of the job: every timer and venue call carries a summary, and the
current details (oms/story.py) follow each transition. Both are user metadata, which replay does not
compare, so adding or rewording them needs no patch (tests/test_temporal_ui.py replays old histories).
"""
from __future__ import annotations

import asyncio
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, is_cancelled_exception

from workflows.order_release01 import Release01Paths
from workflows.search_attributes import ChangedAttributes
from workflows.venue_errors import (
    NOTHING_SENT,
    OUTCOME_UNKNOWN,
    VENUE_BUSY,
    VENUE_ERRORS,
    _error_message,
    _error_type,
    _retry_after_s,
)

with workflow.unsafe.imports_passed_through():
    from activities.execution import OrderContext, PriceQuery
    from activities.limits import DailyOrderDecision, DailyOrderReservation
    from activities.publish import OrderProgress
    from oms.events import OrderEvent
    from activities.placement import PlaceRequest, PreparedPlacement, VenueCallOutcome, mid_price, order_to_place
    from oms.generation import OrderInstruction, generate_order, venue_terms
    from oms.models import (
        AmendRequest,
        CancelRequest,
        Fill,
        FillRecord,
        OrderSnapshot,
        OrderState,
        OrderType,
        Signal,
        TimeInForce,
        Transition,
        client_order_id_for,
    )
    from oms.parent import ParentOrderInput
    from oms.parent import ChildReport
    from oms.pricing import VenuePrices
    from oms.story import current_details
    from oms.routing import RoutePlan
    # `apply` here is apply_safely: an illegal transition is recorded and reconciled, never raised.
    from oms.states import IllegalTransition, apply_fill, record_unforeseen
    from oms.states import apply_safely as apply
    from oms.tca import order_tca, pre_trade
    from oms.validation import Denial, DenialReason, validate_amend, validate_order
    from oms.validation_legacy import validate_order_v1
    from oms.venue import (
        OPEN_STATUSES,
        VenueAmendRequest,
        VenueErrorType,
        VenueOrderRef,
        VenueOrderReport,
        VenueOrderRequest,
        VenueOrderStatus,
    )

S = OrderState

# Orders started before this patch keep release 0.1's tracking paths (order_release01.py) until they
# end or continue as new; the id is recorded once, at the start of each run.
LIFECYCLE_V2 = "order-lifecycle-v2"
# Orders routed by the smart router (prepare_order's context carries the plan): a split becomes a
# parent order, a plan's reason is recorded. Runs started before it ignore a plan.
SMART_ROUTING = "smart-routing"
# Both of the above in one patch marker, what every run started since records (a marker and an upsert
# fewer), and search attributes upserted only when they change.
LIFECYCLE_V3 = "order-lifecycle-v3"
# A native amend whose answer was lost (a timeout, a workflow cancellation mid-call) may have taken:
# the venue's next report on the order settles it (_adopt_amend_in_doubt). Recorded only where that
# happens; runs before it counted fills past the old quantity as anomalies.
AMEND_IN_DOUBT = "amend-in-doubt"
# Preparation and the first submission in one local activity where the order goes out at once
# (activities/placement.py). Recorded instead of v3's marker (which it implies): one marker per run.
LIFECYCLE_V4 = "order-lifecycle-v4"
# A cancel that arrives in the very workflow task where the order was due to go out may follow an
# attempt of that task that sent it and lost the answer with the task (a worker killed mid-task):
# the order is looked up before it is called unsent (_cancel_unsent). Recorded only where that
# happens; runs before it ended such orders "cancelled before submission" at once.
UNSENT_IN_DOUBT = "unsent-in-doubt"
# The run's first workflow task, on its first attempt, starts with at most this many events: started,
# task scheduled, task started, and up to two signals that came before it (a signal-with-start's
# cancel). An attempt after a failed or timed-out one has at least six (started, scheduled, started,
# failed or timed out, scheduled, started): the first task may have run before.
FRESH_FIRST_TASK_EVENTS = 5
# An amend signal and an amend update that arrive in one workflow task reach their handlers in the
# order the SDK delivers them, which can differ between a run and its replay (the test server hands
# the run the update first, the replay meets the signal first: history order). Amends met together
# are carried out signals first (_take_amend). Recorded only where both kinds meet; runs before it
# took them as delivered.
AMENDS_IN_HISTORY_ORDER = "amends-in-history-order"
BUSY_WAIT_MAX_S = 30.0
# A cancel that did not take, an `unknown` to reconcile, a cancel-and-replace awaiting its cancel's
# confirmation: each retry waits on a durable timer, retry_delay_ms doubling up to RETRY_BACKOFF_MAX,
# jittered (workflow.random) so orders that failed together do not retry together. An order makes
# at most ~log2(cap/base) + elapsed/(cap/2) such calls: bounded, whatever the venue answers.
RETRY_BACKOFF_MAX = timedelta(minutes=5)
CONFIRM_CANCEL_ATTEMPTS = 6  # cancel-and-replace: fetches to see the old order's final status
HISTORY_BOUND = 2_000  # events; continue-as-new before this (or when the server suggests it)
# Fill tracking: the per-account poller (workers/poller.py) pushes venue changes as `venue_update`
# signals, one venue call per account per second however many orders are open. The order's own
# polling is only the fallback (poller down): first after about POLL_FIRST (jittered so 10,000
# orders placed together do not poll together), then backing off to POLL_MAX. At 10,000 open
# orders that is ~5.6 requests/s in steady state, inside a 10/s exchange limit.
POLL_FIRST = timedelta(minutes=5)
# What the UI's history calls each venue call (a local activity, otherwise an opaque marker).
_VENUE_CALL_SUMMARIES = {
    "venue_submit": "venue: place the order",
    "venue_fetch": "venue: look the order up by client order id",
    "venue_cancel": "venue: cancel the order",
    "venue_amend": "venue: amend the order",
}
POLL_AFTER_FILL = timedelta(seconds=5)
POLL_MAX = timedelta(minutes=30)
LOCAL_TASK_TIMEOUT = timedelta(seconds=30)
PREPARE_TIMEOUT = timedelta(seconds=10)
PREPARE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=10))
# prepare_and_place bounds its own steps (preparation, then the venue call within the order's
# execution_timeout_ms, at most an hour): this only catches a worker that stopped answering.
PLACE_TIMEOUT = timedelta(hours=1, seconds=30)
LOCAL_RETRY_THRESHOLD = timedelta(seconds=5)


class PendingAmend(BaseModel):
    request: AmendRequest
    id: str
    # How and when it arrived (the history length then): amends met in one workflow task are put in
    # one order whatever order they were delivered in.
    arrived_at: int = 0
    by_update: bool = False


class OrderWorkflowState(BaseModel):
    """Everything the workflow knows; handed whole to continue-as-new."""

    signal: Signal
    snapshot: OrderSnapshot
    context: OrderContext | None = None
    seen_fill_ids: list[str] = Field(default_factory=list)
    published_transitions: int = 0
    generation: int = 0  # bumps on cancel-and-replace: the replacement gets a new client order id
    poll_interval_ms: int | None = None  # set on the first wait (jittered POLL_FIRST)
    cancel_request: CancelRequest | None = None
    amend_requests: list[PendingAmend] = Field(default_factory=list)
    amend_results: dict[str, str | None] = Field(default_factory=dict)  # id -> refusal or None
    native_amend: bool = True
    venue_updates: list[VenueOrderReport] = Field(default_factory=list)
    price_collar: Decimal | None = None  # market orders go out as IOC limits at this price
    venue_wait_s: float = 0.0  # waited so far on a paused venue or an open breaker
    retry_streak: int = 0  # cancel / reconcile attempts since the order was last quiet: the backoff's exponent
    # A cancel under way (requested, or expire_at reached) ends the order in this state, whatever
    # path (unknown, reconciliation) it takes to get there.
    cancel_target: OrderState | None = None
    cancel_reason: str | None = None
    published_anomalies: int = 0
    parent_order_id: str | None = None  # a child of a parent order: reports to it by signal
    # A native amend sent and not answered: the terms the venue holds if it took (_adopt_amend_in_doubt).
    amend_in_doubt: AmendRequest | None = None


class ChildOrderInput(BaseModel):
    """How a parent order (ParentOrderWorkflow) starts one of its children."""

    model_config = ConfigDict(extra="forbid")

    signal: Signal
    parent_order_id: str


def _initial_snapshot(signal: Signal, now: datetime) -> OrderSnapshot:
    order_id = workflow.info().workflow_id
    return OrderSnapshot(
        order_id=order_id,
        signal_id=signal.signal_id,
        strategy_id=signal.strategy_id,
        client_order_id=client_order_id_for(order_id),
        symbol=signal.symbol,
        side=signal.side,
        order_type=signal.order_type or (OrderType.LIMIT if signal.limit_price else OrderType.MARKET),
        time_in_force=signal.time_in_force or (TimeInForce.GTD if signal.expire_at else TimeInForce.GTC),
        quantity=signal.quantity,
        limit_price=signal.limit_price,
        exchange=signal.exchange or "simulation",
        reference_price=signal.reference_price,
        created_at=now,
        updated_at=now,
        transitions=[Transition(state=S.CREATED, at=now)],
        expire_at=signal.expire_at,
        intent=signal.intent,
    )


def _routing_reason(plan: RoutePlan) -> str:
    """The router's decision in one line for the snapshot: why, then what it weighed."""
    weighed = "; ".join(plan.considered)
    return (f"{plan.reason} [{weighed}]" if weighed else plan.reason)[:500]


RequestModel = TypeVar("RequestModel", bound=BaseModel)


def _parse_request(model: type[RequestModel], raw: Any) -> RequestModel:
    """A cancel or amend argument as its strict model, or an ApplicationError naming what is wrong."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                             for e in error.errors(include_url=False, include_input=False))
        raise ApplicationError(f"invalid {model.__name__}: {problems}"[:500], type="InvalidRequest",
                               non_retryable=True) from None


@workflow.defn(name="OrderWorkflow")
class OrderWorkflow(Release01Paths):
    @workflow.init
    def __init__(self, order: Signal | OrderWorkflowState | ChildOrderInput) -> None:
        # Started with a Signal (or, as a parent's child, a ChildOrderInput); continued-as-new with the
        # whole state (one argument either way: the SDK applies type hints only when the argument
        # count matches).
        if isinstance(order, OrderWorkflowState):
            self._state = order
        elif isinstance(order, ChildOrderInput):
            snapshot = _initial_snapshot(order.signal, workflow.now())
            snapshot.parent_order_id = order.parent_order_id
            self._state = OrderWorkflowState(signal=order.signal, snapshot=snapshot,
                                             parent_order_id=order.parent_order_id)
        else:
            self._state = OrderWorkflowState(signal=order, snapshot=_initial_snapshot(order, workflow.now()))
        self._seen = set(self._state.seen_fill_ids)
        self._pending_fills: list[Fill] = []
        # Asked here, at the run's first task, not after prepare_order: a local activity's marker and a
        # patch marker recorded in one task are not always in the order the code ran them. A run
        # started today records one marker (every patch marker is also a search-attribute upsert, a
        # visibility write on the server); runs recorded before it answer the two older questions.
        self._place_when_prepared = workflow.patched(LIFECYCLE_V4)
        v3 = self._place_when_prepared or workflow.patched(LIFECYCLE_V3)
        if v3:
            self._v2 = self._smart_routing = True
        else:
            self._v2 = workflow.patched(LIFECYCLE_V2)
            self._smart_routing = workflow.patched(SMART_ROUTING)
        self._attributes = ChangedAttributes(only_changes=v3)  # v3: an unchanged attribute is not upserted
        self._lock = asyncio.Lock()  # release 0.1's amend_order only
        self._handing_over = False  # continue-as-new is waiting for the handlers to return
        # A Temporal cancellation request is not carried to a new run by the server: this run sees the
        # order's cancel through (bounded: every retry waits on the backoff, a month of venue outage
        # stays far below Temporal's history limit).
        self._cancelled_run = False
        self._local_activity_at = 0  # history length when a local activity last answered
        self._cancel_arrived_at: int | None = None  # history length of the task a cancel arrived in
        self._first_task_at = workflow.info().get_current_history_length()
        # What the UI shows as the order's current details (a query answer, no history event).
        workflow.set_current_details(current_details(self._state.snapshot))

    # --- public interface ----------------------------------------------------------------------
    @workflow.query(name="status")
    def status(self) -> OrderSnapshot:
        return self._state.snapshot

    # Cancel and amend arguments arrive loosely typed and are parsed here, so that a malformed one
    # (unknown field, 1e30, a 3 MB reason) is refused with its reason: decoding into the strict model
    # would make the SDK drop such a signal silently and fail an update with "Failed decoding arguments".
    @workflow.signal(name="cancel")
    def cancel(self, raw: Any) -> None:
        try:
            request = _parse_request(CancelRequest, raw)
        except ApplicationError as error:
            workflow.logger.warning("cancel signal refused, order unchanged: %s", error)
            return
        if not self._state.snapshot.is_terminal and self._state.cancel_request is None:
            self._state.cancel_request = request
            self._cancel_arrived_at = workflow.info().get_current_history_length()

    @workflow.signal(name="amend")
    def amend(self, raw: Any) -> None:
        try:
            request = _parse_request(AmendRequest, raw)
        except ApplicationError as error:
            workflow.logger.warning("amend signal refused, order unchanged: %s", error)
            return
        refusal = self._amend_refusal(request)
        if refusal is None:
            self._state.amend_requests.append(self._pending_amend(request, by_update=False))
        else:
            workflow.logger.warning("amend signal refused, order unchanged: %s", refusal)

    @workflow.signal(name="venue_update")
    def venue_update(self, report: VenueOrderReport) -> None:
        """A change seen by the batched per-account poller; applied by the main loop."""
        if report.client_order_id == self._state.snapshot.client_order_id and not self._state.snapshot.is_terminal:
            self._state.venue_updates.append(report)

    @workflow.update(name="cancel_order")
    async def cancel_order(self, raw: Any) -> OrderSnapshot:
        """Returns the terminal snapshot, or the current one (a cancel still under way) when the run
        continues as new: the request goes on in the next run's state, so it never blocks the loop."""
        self.cancel(raw)  # parsed already by the validator
        await workflow.wait_condition(lambda: self._state.snapshot.is_terminal or self._handing_over)
        return self._state.snapshot

    @cancel_order.validator
    def _validate_cancel(self, raw: Any) -> None:
        _parse_request(CancelRequest, raw)
        if self._state.snapshot.is_terminal:
            raise ApplicationError(f"order is already {self._state.snapshot.state.value}", type="CancelRefused")

    @workflow.update(name="amend_order")
    async def amend_order(self, raw: Any) -> OrderSnapshot:
        request = _parse_request(AmendRequest, raw)  # cannot fail: the validator parsed it
        if self._v2:
            # Queued at once, carried out in order by the main loop (each sees the previous one's
            # outcome); the loop never continues as new with an amend queued, so this always returns.
            pending = self._pending_amend(request, by_update=True)
            self._state.amend_requests.append(pending)
            await workflow.wait_condition(
                lambda: pending.id in self._state.amend_results or self._state.snapshot.is_terminal)
            if pending.id not in self._state.amend_results:
                raise ApplicationError(f"order ended {self._state.snapshot.state.value} before the amend applied",
                                       type="AmendRefused")
            refusal = self._state.amend_results.pop(pending.id)
            if refusal:
                raise ApplicationError(refusal, type="AmendRefused")
            return self._state.snapshot
        async with self._lock:  # one amend at a time: each sees the previous one's outcome
            pending = PendingAmend(request=request, id=str(workflow.uuid4()))
            self._state.amend_requests.append(pending)
            await workflow.wait_condition(
                lambda: pending.id in self._state.amend_results or self._state.snapshot.is_terminal)
            refusal = self._state.amend_results.get(pending.id)
            if refusal:
                raise ApplicationError(refusal, type="AmendRefused")
            return self._state.snapshot

    @amend_order.validator
    def _validate_amend(self, raw: Any) -> None:
        refusal = self._amend_refusal(_parse_request(AmendRequest, raw))
        if refusal:
            raise ApplicationError(refusal, type="AmendRefused")

    @staticmethod
    def _pending_amend(request: AmendRequest, by_update: bool) -> PendingAmend:
        return PendingAmend(request=request, id=str(workflow.uuid4()), by_update=by_update,
                            arrived_at=workflow.info().get_current_history_length())

    def _take_amend(self) -> PendingAmend:
        """The next queued amend. Of the amends that arrived in one workflow task, signals come first,
        then updates, each kind in its order: the order a replay delivers them in (see
        AMENDS_IN_HISTORY_ORDER), whichever this run met first."""
        queue = self._state.amend_requests
        together = [p for p in queue if p.arrived_at == queue[0].arrived_at]
        if len({p.by_update for p in together}) == 2 and workflow.patched(AMENDS_IN_HISTORY_ORDER):
            queue.sort(key=lambda p: (p.arrived_at, p.by_update))  # stable: each kind keeps its order
        return queue.pop(0)

    def _amend_refusal(self, request: AmendRequest, prices: VenuePrices | None = None) -> str | None:
        """Why an amend cannot apply, or None. Validated as the order it would become: without
        `prices` (signal handler, update validator: no I/O there) only the rules that need no price;
        `_amend_at_venue` then checks them all at the venue's current prices before anything
        reaches the venue."""
        snap = self._state.snapshot
        if snap.is_terminal:
            return f"order is already {snap.state.value}"
        if self._state.cancel_request is not None or snap.state == S.PENDING_CANCEL:
            return "order is being cancelled"
        context = self._state.context
        if context is not None and context.prices is not None and context.market is not None:
            denial = validate_amend(snap, request, context.market, context.limits, workflow.now(),
                                    prices, self._state.signal.reference_price, check_prices=prices is not None)
            return str(denial) if denial else None
        # A release-0.1 order (or one still being prepared: checked again when carried out).
        if request.limit_price is not None and snap.order_type != OrderType.LIMIT:
            return "a market order has no limit price to amend"
        if request.quantity is not None and request.quantity <= snap.filled_quantity:
            return f"quantity {request.quantity} is not above the filled quantity {snap.filled_quantity}"
        if request.limit_price is not None and self._state.context and self._state.context.market:
            step = self._state.context.market.price_step
            if (request.limit_price / step) != (request.limit_price / step).to_integral_value():
                return f"limit price {request.limit_price} is not a multiple of the tick size {step}"
        return None

    # --- main flow -----------------------------------------------------------------------------
    @workflow.run
    async def run(self, order: Signal | OrderWorkflowState | ChildOrderInput) -> OrderSnapshot:
        if not self._v2:
            return await self._run_release01()
        try:
            await self._work()
        except BaseException as error:  # noqa: B036 - only a cancellation is handled here
            if not is_cancelled_exception(error):
                raise
            # A Temporal cancellation request (UI, `temporal workflow cancel`, handle.cancel()): the
            # order is cancelled at the venue. It is delivered once, so what follows runs shielded
            # from it, and the workflow completes with the order's real end.
            await self._after_workflow_cancellation()
        return self._state.snapshot

    async def _work(self) -> None:
        placed = False
        if self._state.context is None:
            placed = await self._prepare_and_validate()
        if not placed and not self._state.snapshot.is_terminal and self._state.snapshot.state == S.VALIDATED:
            await self._wait_for_start()
        if not placed and not self._state.snapshot.is_terminal and self._state.snapshot.state == S.VALIDATED:
            await self._submit()
        await self._track_until_terminal()

    async def _track_until_terminal(self) -> None:
        while not self._state.snapshot.is_terminal:
            if self._should_continue_as_new() and not self._requests_to_serve() and not self._cancelled_run:
                await self._hand_over()
            await self._track_once()
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record_before_closing()

    async def _record_before_closing(self) -> None:
        """End the workflow task before the one that closes the run. The server refuses a closing
        task when a signal arrived meanwhile (UnhandledCommand) and drops its local-activity results
        with it; the retry would then decide again without them (a market order filled at the
        venue, then "cancelled before submission" by a cancel that arrived during the fill). A
        1 ms timer makes the venue's answers durable first. Shielded: a workflow cancellation
        arriving meanwhile does not cut it short (the cancellation path then runs its own)."""
        if workflow.info().get_current_history_length() > self._local_activity_at:
            return  # a workflow task completed since the last venue answer: already durable
        await asyncio.shield(workflow.sleep(timedelta(milliseconds=1),
                                            summary="make the venue's answers durable before closing"))

    def _requests_to_serve(self) -> bool:
        """Queued amends, or a cancel not yet tried once: carried out before continuing as new."""
        return bool(self._state.amend_requests) or (
            self._state.cancel_request is not None and self._state.cancel_target is None)

    async def _hand_over(self) -> None:
        """Continue as new once the handlers have returned. The loop first serves queued amends and a
        new cancel's first attempt; a cancel still under way travels in the state and cancel_order
        returns the current snapshot. A request arriving meanwhile is served before trying again."""
        await self._record_before_closing()
        if self._requests_to_serve():
            return  # arrived meanwhile: served first
        self._handing_over = True
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() or self._requests_to_serve())
        self._handing_over = False
        if not self._requests_to_serve():
            self._state.seen_fill_ids = sorted(self._seen)
            workflow.continue_as_new(self._state)

    async def _after_workflow_cancellation(self) -> None:
        self._handing_over, self._cancelled_run = False, True
        snap = self._state.snapshot
        if snap.is_terminal:  # the closing barrier was already passed, or is running (shielded)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return
        if self._state.cancel_request is None:
            self._state.cancel_request = CancelRequest(reason="workflow cancellation requested")
        reason = self._state.cancel_request.reason or "workflow cancellation requested"
        if snap.state in (S.CREATED, S.VALIDATED):
            await self._transition(S.CANCELLED, reason)  # nothing reached a venue
        elif snap.state in (S.SUBMITTED, S.PENDING_CANCEL, S.PENDING_AMEND):
            # The cancellation interrupted a venue call: its outcome is not known until reconciled.
            await self._transition(S.UNKNOWN, "venue call interrupted by the workflow cancellation")
        await self._track_until_terminal()

    async def _run_release01(self) -> OrderSnapshot:
        if self._state.context is None:
            await self._prepare_and_validate()
        if not self._state.snapshot.is_terminal and self._state.snapshot.state == S.VALIDATED:
            await self._wait_for_start()
        if not self._state.snapshot.is_terminal and self._state.snapshot.state == S.VALIDATED:
            await self._submit()
        while not self._state.snapshot.is_terminal:
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._state.seen_fill_ids = sorted(self._seen)
                workflow.continue_as_new(self._state)
            await self._track_once_v1()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state.snapshot

    async def _prepare_and_validate(self) -> bool:
        """Prepare the order and decide: denied, a parent, cancelled or validated. True when
        preparation placed it as well (prepare_and_place): it is then submitted and answered."""
        prepared = await self._prepare_and_place() if self._place_when_prepared and self._goes_out_at_once() else None
        if prepared is not None and prepared.placed is not None:
            return True
        if prepared is not None:
            context = prepared.context
        else:  # not going out at once, or preparation failed once: prepared with retries a cancel can stop
            context = await workflow.execute_local_activity(
                "prepare_order", self._state.signal, result_type=OrderContext,
                summary="prepare: market rules, limits, prices, daily slot",
                start_to_close_timeout=PREPARE_TIMEOUT, retry_policy=PREPARE_RETRY,
                local_retry_threshold=LOCAL_RETRY_THRESHOLD,  # a venue down for long: back off on durable timers
            )
        await self._validate(context)
        return False

    def _goes_out_at_once(self) -> bool:
        """Nothing to wait for between preparation and submission: no start_at ahead, no cancel yet."""
        return self._state.cancel_request is None and self._start_reached()

    def _start_at(self) -> datetime | None:
        """`execution.start_at`: when the order is to go out, if not at once."""
        execution = self._state.signal.execution
        return execution.start_at if execution else None

    def _start_reached(self) -> bool:
        start_at = self._start_at()
        return start_at is None or start_at <= workflow.now()

    async def _cancel_unsent(self) -> None:
        """End an order cancelled before this run sent it. Where the cancel arrived in the very task
        in which the order was due to go out, an earlier attempt of that task may have sent it and
        lost the answer with the task (a worker killed mid-task; the cancel is then seen first when
        the task runs again): the outcome is unknown, and reconciled as any other (_reconcile: looked
        up by client order id and cancelled at the venue if there, ended once the receive window has
        passed if not). Not where the history shows the task runs for the first time (the run's first
        task with no failed attempt before it: a cancel sent with the start or just after it)."""
        reason = self._state.cancel_request.reason or "cancelled before submission"
        now_at = workflow.info().get_current_history_length()
        fresh_first_task = now_at == self._first_task_at <= FRESH_FIRST_TASK_EVENTS
        in_doubt = (self._cancel_arrived_at == now_at and self._start_reached() and not fresh_first_task
                    and workflow.patched(UNSENT_IN_DOUBT))
        if not in_doubt:
            await self._transition(S.CANCELLED, reason)
            return
        snap, assumed = self._state.snapshot, "assumed: an earlier attempt of this task may have {}"
        if snap.state == S.CREATED:
            apply(snap, S.VALIDATED, workflow.now(), assumed.format("validated the order"))
        apply(snap, S.SUBMITTED, workflow.now(), assumed.format("sent the order"))
        await self._transition(S.UNKNOWN, f"{reason}: the cancel arrived in the task that was to send the order, "
                                          "which may have run before and sent it; looking it up")

    async def _prepare_and_place(self) -> PreparedPlacement | None:
        """One local activity prepares and, when the order goes out at once, places it. One attempt:
        if preparation fails (nothing was sent), None, and the order is prepared again on the usual
        path, whose retries (a venue down, a breaker open) a cancellation can cut short before
        anything is placed. The attempt is shielded from a workflow cancellation: the request may
        have left, so its answer is waited for and recorded first, and the cancellation then cancels
        what the venue holds."""
        snap = self._state.snapshot
        call = workflow.start_local_activity(
            "prepare_and_place", PlaceRequest(signal=self._state.signal, client_order_id=snap.client_order_id),
            result_type=PreparedPlacement, summary="prepare and place: market rules, limits, prices, daily slot; the order",
            start_to_close_timeout=PLACE_TIMEOUT, retry_policy=RetryPolicy(maximum_attempts=1),
        )
        cancelled = False
        try:
            try:
                prepared = await asyncio.shield(call)
            except asyncio.CancelledError:
                cancelled = True
                prepared = await call
        except VENUE_ERRORS as error:  # preparation failed: nothing was sent
            if cancelled:
                raise asyncio.CancelledError("workflow cancellation during preparation") from error
            workflow.logger.info("prepare_and_place: preparation failed (%s); preparing with retries",
                                 _error_message(error))
            return None
        if prepared.placed is not None:
            self._local_activity_at = workflow.info().get_current_history_length()
            await self._adopt_placement(prepared, cancelled)
        elif cancelled:
            self._state.context = prepared.context  # nothing placed: the order's daily slot goes back
        if cancelled:
            if prepared.placed is not None:
                # The run may end in the cancellation's next steps: the venue's answer is made
                # durable first, as before any close (_record_before_closing).
                await self._record_before_closing()
            raise asyncio.CancelledError("workflow cancellation during preparation")
        return prepared

    async def _adopt_placement(self, prepared: PreparedPlacement, cancelled: bool) -> None:
        """Preparation placed the order: the workflow decides again from the recorded context
        (order_to_place, the function the activity ran) and takes the venue's answer as its
        submission's. Where it would not have placed that order (a decision that differs) or no longer
        wants it (a cancel meanwhile), the order is cancelled at the venue, never forgotten: a
        request that certainly did not land ends here, anything else is tracked and cancelled."""
        context, snap, signal = prepared.context, self._state.snapshot, self._state.signal
        self._state.context, snap.exchange = context, context.exchange
        if context.route is not None:
            snap.routing_reason = _routing_reason(context.route)
        expected = order_to_place(signal, context, snap.client_order_id, workflow.now())
        instruction = expected.instruction if expected is not None else generate_order(
            signal, context.params, context.exchange, context.market, mid_price(context), context.estimated_slippage_bps)
        self._adopt_instruction(context, instruction)
        self._state.price_collar = instruction.price_collar
        apply(snap, S.VALIDATED, workflow.now(), self._routed(context))
        if expected is None or expected.request != prepared.placed:
            workflow.logger.warning("preparation placed %s, which this workflow would not place: cancelling it",
                                    snap.client_order_id)
            self._state.cancel_request = CancelRequest(
                reason="preparation placed an order this workflow's decision would not place")
        withdrawn = cancelled or self._state.cancel_request is not None
        failure = prepared.outcome.failure
        if withdrawn and failure is not None and failure.type in NOTHING_SENT:
            self._state.snapshot.venue_requests += 1
            reason = self._state.cancel_request.reason if self._state.cancel_request else None
            await self._transition(S.CANCELLED, f"{reason or 'workflow cancellation requested'}; "
                                                f"the venue took nothing ({failure.message})")
            return
        await self._submit(first=prepared.outcome)

    async def _validate(self, context: OrderContext) -> None:
        signal = self._state.signal
        self._state.context = context
        snap = self._state.snapshot
        snap.exchange = context.exchange
        # A context from before smart routing has no route: those orders replay as they ran.
        if self._smart_routing and (context.route is not None or context.route_refusal is not None):
            if context.route is not None:
                snap.routing_reason = _routing_reason(context.route)
            if context.route_refusal is not None:
                await self._deny(Denial(reason=DenialReason.BELOW_MIN_AMOUNT, message=context.route_refusal))
                return
            if context.route.is_split:
                await self._become_parent(context.route)
                return
        if context.problem or context.market is None:
            reason = DenialReason.UNKNOWN_EXCHANGE if "exchange" in (context.problem or "") else DenialReason.UNKNOWN_SYMBOL
            await self._deny(Denial(reason=reason, message=context.problem or "no market data"))
            return
        instruction = generate_order(signal, context.params, context.exchange, context.market, mid_price(context),
                                     context.estimated_slippage_bps)
        self._adopt_instruction(context, instruction)
        if self._state.cancel_request is not None:
            await self._cancel_unsent()
            return
        if context.prices is None:  # prepared by release 0.1: that release's rules, so its history replays
            denial = validate_order_v1(instruction, signal.side, context.market, context.limits, workflow.now())
        else:
            denial = validate_order(instruction, signal.side, context.market, context.limits, workflow.now(),
                                    context.prices, signal.reference_price)
        if denial is None:
            # prepare_order took the slot (one round trip fewer). Its recorded answer decides the
            # branch, so orders prepared before it did so replay their own reservation call.
            if context.daily_decision is not None:
                decision = context.daily_decision
            else:
                decision = await workflow.execute_local_activity(
                    "reserve_daily_order",
                    DailyOrderReservation(account=f"{context.exchange}:{context.account}", order_id=snap.order_id,
                                          day=workflow.now().strftime("%Y-%m-%d"), limit=context.limits.max_daily_orders),
                    result_type=DailyOrderDecision, start_to_close_timeout=timedelta(seconds=10),
                    summary="reserve a daily order slot",
                )
            if not decision.allowed:
                denial = Denial(reason=DenialReason.DAILY_ORDER_LIMIT,
                                message=f"max_daily_orders {context.limits.max_daily_orders} reached")
        if denial is not None:
            await self._deny(denial)
            return
        self._state.price_collar = instruction.price_collar
        # Published with the venue's answer (or before a start_at wait): fewer storage calls per order.
        apply(self._state.snapshot, S.VALIDATED, workflow.now(), self._routed(context))

    def _adopt_instruction(self, context: OrderContext, instruction: OrderInstruction) -> None:
        """The generated order's terms on the snapshot, and its pre-trade TCA inputs."""
        snap = self._state.snapshot
        snap.order_type, snap.time_in_force = instruction.order_type, instruction.time_in_force
        snap.reference_price = instruction.reference_price
        self._set_pre_trade(mid_price(context), instruction.estimated_fee, instruction.estimated_slippage_bps)

    @staticmethod
    def _routed(context: OrderContext) -> str | None:
        return (f"routed to {context.exchange}: the {context.rerouted_from} circuit breaker is open"
                if context.rerouted_from else None)

    async def _become_parent(self, plan: RoutePlan) -> None:
        """The router split the order: it continues as new, same workflow id, as a ParentOrderWorkflow
        whose children (one per leg) are ordinary orders. Nothing has reached a venue yet: a cancel
        that arrives first ends it here; an amend is refused (the parent takes amends once it runs)."""
        self._handing_over = True  # cancel_order returns the current snapshot instead of waiting
        while True:
            for pending in self._state.amend_requests:
                self._state.amend_results[pending.id] = "order is being split across venues: amend it again"
            self._state.amend_requests.clear()
            if self._state.cancel_request is not None:
                self._handing_over = False
                await self._transition(S.CANCELLED, self._state.cancel_request.reason or "cancelled before submission")
                return
            await workflow.wait_condition(lambda: workflow.all_handlers_finished() or bool(self._state.amend_requests))
            if workflow.all_handlers_finished() and not self._state.amend_requests and self._state.cancel_request is None:
                break
        workflow.continue_as_new(ParentOrderInput(signal=self._state.signal, route=plan), workflow="ParentOrderWorkflow")

    async def _deny(self, denial: Denial) -> None:
        await self._transition(S.DENIED, str(denial))

    async def _wait_for_start(self) -> None:
        start_at, waited = self._start_at(), False
        if not self._start_reached():
            await self._publish()
            if self._state.context.prices is None:  # a release-0.1 order waits as it did then
                await self._wait(lambda: self._state.cancel_request is not None, start_at - workflow.now(),
                                 "start_at: wait before placing the order")
            else:
                waited = True
                await self._wait_applying_amends(start_at)
        if self._state.cancel_request is not None:
            await self._cancel_unsent()
        elif self._state.snapshot.expire_at is not None and workflow.now() >= self._state.snapshot.expire_at:
            await self._transition(S.EXPIRED, "expire_at reached before submission")
        elif waited:
            await self._revalidate_at_current_prices()

    async def _wait_applying_amends(self, start_at: datetime) -> None:
        """Until start_at: amends apply to the order not yet placed (validated, answered at once)."""
        while self._state.cancel_request is None:
            if self._apply_amends_before_placement():
                await self._refresh_cached_snapshot()
            if workflow.now() >= start_at:
                return
            await self._wait(lambda: self._state.cancel_request is not None or bool(self._state.amend_requests),
                             start_at - workflow.now(), "start_at: wait before placing the order")

    def _apply_amends_before_placement(self) -> bool:
        """Whether any amend applied."""
        snap, applied = self._state.snapshot, False
        while self._state.amend_requests:
            pending = self._take_amend()
            # At the prices read before the wait; all is validated again at current ones after it.
            refusal = self._amend_refusal(pending.request, self._state.context.prices)
            if refusal is None:
                if pending.request.quantity is not None:
                    snap.quantity = pending.request.quantity
                if pending.request.limit_price is not None:
                    snap.limit_price = pending.request.limit_price
                snap.updated_at = workflow.now()
                applied = True
            self._state.amend_results[pending.id] = refusal
        return applied

    async def _refresh_cached_snapshot(self) -> None:
        """An amend before placement is no transition: the order cache (the API's view) gets the
        new terms now; the order's events and table row follow with its next transition."""
        await workflow.execute_local_activity(
            "record_progress", OrderProgress(snapshot=self._state.snapshot),
            start_to_close_timeout=timedelta(seconds=10), summary="record: amended before placement",
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_interval=timedelta(seconds=5)),
        )

    async def _revalidate_at_current_prices(self) -> None:
        """After a start_at wait the prices read at signal time are stale: read them again, and
        rebuild and validate the order (as amended meanwhile) at the venue's current price."""
        context, snap, signal = self._state.context, self._state.snapshot, self._state.signal
        try:
            prices = await self._read_prices()
        except VENUE_ERRORS as error:
            await self._deny(Denial(reason=DenialReason.NO_PRICE,
                                    message=f"cannot read the venue's price after the start_at wait: {_error_message(error)}"))
            return
        context.prices, context.bid, context.ask = prices, prices.bid, prices.ask
        current = signal.model_copy(update={"quantity": snap.quantity, "limit_price": snap.limit_price})
        instruction = generate_order(current, context.params, context.exchange, context.market, prices.mid,
                                     context.estimated_slippage_bps)
        denial = validate_order(instruction, signal.side, context.market, context.limits, workflow.now(),
                                prices, signal.reference_price)
        if denial is not None:
            await self._deny(denial)
            return
        snap.reference_price = instruction.reference_price
        self._state.price_collar = instruction.price_collar
        self._set_pre_trade(prices.mid, instruction.estimated_fee, instruction.estimated_slippage_bps)

    def _set_pre_trade(self, arrival: Decimal | None, fee: Decimal | None, slippage_bps: Decimal | None) -> None:
        """TCA inputs, from data already here (no command): the decision price, the venue mid the order
        goes out at, and the pre-trade estimate; the realized figures follow on every publish."""
        signal = self._state.signal
        algo = signal.execution.algo.value if signal.execution and signal.execution.algo else None
        self._state.snapshot.tca = pre_trade(signal.symbol, signal.reference_price, arrival, signal.created_at,
                                             algo, fee, slippage_bps)

    async def _read_prices(self) -> VenuePrices:
        context, snap = self._state.context, self._state.snapshot
        with self._cancellation_not_a_venue_error():
            return await workflow.execute_local_activity(
                "read_prices", PriceQuery(exchange=snap.exchange, symbol=snap.symbol, quote_currency=context.market.quote,
                                          account_currency=context.limits.currency),
                result_type=VenuePrices, start_to_close_timeout=timedelta(seconds=10),
                summary="read the venue's prices after the start_at wait",
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=5,
                                         non_retryable_error_types=[VenueErrorType.REJECTED.value]),
            )

    @contextmanager
    def _cancellation_not_a_venue_error(self):
        """A venue call interrupted by a Temporal cancellation raises ActivityError(CancelledError),
        which every `except VENUE_ERRORS` would take for a venue failure (an amend "failed", a
        submission "failed", the cancellation lost). Raised as the cancellation it is, it reaches
        `run`, which cancels the order at the venue. Release 0.1's paths keep their behaviour."""
        try:
            yield
        except VENUE_ERRORS as error:
            if self._v2 and is_cancelled_exception(error):
                raise asyncio.CancelledError("workflow cancellation during a venue call") from error
            raise

    # --- venue calls ---------------------------------------------------------------------------
    def _ref(self) -> VenueOrderRef:
        snap = self._state.snapshot
        return VenueOrderRef(exchange=snap.exchange, account=self._state.context.account,
                             client_order_id=snap.client_order_id, symbol=snap.symbol)

    async def _venue_call(self, activity: str, arg: BaseModel) -> VenueOrderReport:
        """One attempt; notes when its answer came (durable once a later workflow task starts)."""
        try:
            with self._cancellation_not_a_venue_error():
                return await workflow.execute_local_activity(
                    activity, arg, result_type=VenueOrderReport,
                    start_to_close_timeout=timedelta(milliseconds=self._state.context.params.execution_timeout_ms),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    local_retry_threshold=LOCAL_TASK_TIMEOUT,
                    summary=_VENUE_CALL_SUMMARIES.get(activity, activity),
                )
        finally:
            self._local_activity_at = workflow.info().get_current_history_length()

    async def _venue(self, activity: str, arg: BaseModel, attempts: int | None = None,
                     first: VenueCallOutcome | None = None) -> VenueOrderReport:
        """One venue call with the order's retry policy for transient errors; raises on the rest.
        `first`: the first attempt's outcome, already had (prepare_and_place made that call)."""
        params = self._state.context.params
        attempts = params.retry_attempts + 1 if attempts is None else attempts
        delay = timedelta(milliseconds=max(params.retry_delay_ms, 1))
        attempt, busy = 1, 0
        while True:
            self._state.snapshot.venue_requests += 1
            try:
                if first is not None:
                    outcome, first = first, None
                    if outcome.failure is not None:
                        raise outcome.failure.as_error()
                    return outcome.report
                return await self._venue_call(activity, arg)
            except VENUE_ERRORS as error:  # (never a cancellation: _venue_call raises that as such)
                kind = _error_type(error)
                pause = _retry_after_s(error) if kind in VENUE_BUSY else None
                if pause is not None:
                    # At least as long as asked; longer, and spread out, the longer it lasts, so
                    # that thousands of waiting orders do not come back all at once.
                    wait = max(pause, min(pause * 2 ** busy, BUSY_WAIT_MAX_S)) * (1 + workflow.random().random() / 2)
                    if self._state.venue_wait_s + wait <= self._state.context.max_venue_wait_s:
                        workflow.logger.info("%s: venue busy (%s), waiting %.3f s", activity, kind, wait)
                        self._state.venue_wait_s += wait
                        busy += 1
                        await workflow.sleep(timedelta(seconds=wait), summary=f"{activity}: venue busy, waiting")
                        continue
                if kind not in NOTHING_SENT or attempt >= attempts:
                    raise
                workflow.logger.info("%s attempt %d failed (%s), retrying in %s", activity, attempt, kind, delay)
                await workflow.sleep(delay, summary=f"{activity}: retry after a transient venue error")
                attempt += 1
                delay = min(delay * 2, timedelta(seconds=30))

    async def _submit(self, first: VenueCallOutcome | None = None) -> None:
        # Published together with the venue's answer: one storage call fewer on the hot path.
        apply(self._state.snapshot, S.SUBMITTED, workflow.now(), None)
        try:
            report = await self._venue("venue_submit", self._submission(), first=first)
        except VENUE_ERRORS as error:
            await self._on_submit_error(error)
            return
        await self._apply_report(report)

    def _submission(self) -> VenueOrderRequest:
        """The venue order for what remains of the order (oms.generation.venue_terms: GTD as GTC, a
        collared market order as an IOC limit)."""
        snap, market = self._state.snapshot, self._state.context.market
        order_type, price, tif = venue_terms(snap.order_type, snap.time_in_force, snap.limit_price, snap.side,
                                             self._state.price_collar, market.price_step if market else None)
        return VenueOrderRequest(
            exchange=snap.exchange, account=self._state.context.account, client_order_id=snap.client_order_id,
            symbol=snap.symbol, side=snap.side, order_type=order_type,
            quantity=snap.quantity - snap.filled_quantity, limit_price=price, time_in_force=tif,
        )

    async def _on_submit_error(self, error: BaseException) -> None:
        kind = _error_type(error)
        if kind == VenueErrorType.REJECTED.value:
            await self._transition(S.REJECTED, _error_message(error))
        elif kind in NOTHING_SENT:  # retries exhausted and the venue never took the order
            await self._transition(S.FAILED, f"venue unavailable after retries: {_error_message(error)}")
        else:  # timeout, lost answer, or an error we cannot classify: the order may exist
            # Reconciled by the main loop (_track_once), never resubmitted from here.
            await self._transition(S.UNKNOWN, f"submit outcome unknown: {_error_message(error)}")

    async def _reconcile(self) -> None:
        """Resolve `unknown` by asking the venue about our client order id, one look per turn, each
        after the backoff. "Not found" resubmits (the same client id) only when the order is still
        wanted and the venue never acknowledged it; otherwise it is final only once the receive
        window of any request still in flight has passed."""
        await self._backoff()
        self._state.retry_streak += 1
        try:
            report = await self._venue("venue_fetch", self._ref())
        except VENUE_ERRORS as error:
            workflow.logger.warning("reconcile fetch failed: %s", _error_message(error))
            return  # still unknown: the next turn looks again, later
        if report.status != VenueOrderStatus.NOT_FOUND:
            await self._apply_report(report)
            return
        ending = self._ending()
        acknowledged = self._state.snapshot.venue_order_id is not None  # this generation's order was seen
        if ending is None and not acknowledged:
            await self._submit()  # confirmed never received: never a second order (same client id)
            return
        # A request sent a moment ago may still land: wait out the venue's receive window, look again.
        await workflow.sleep(timedelta(milliseconds=self._state.context.receive_window_ms),
                             summary="reconcile: wait out the venue's receive window, then look again")
        try:
            report = await self._venue("venue_fetch", self._ref())
        except VENUE_ERRORS:
            return
        if report.status != VenueOrderStatus.NOT_FOUND:
            await self._apply_report(report)
            return
        if ending is None:  # acknowledged once, and now unknown to the venue: it is gone
            record_unforeseen(self._state.snapshot, IllegalTransition(S.UNKNOWN, S.CANCELLED, "the venue no longer "
                              "knows the order it acknowledged"), workflow.now(), None)
            ending = S.CANCELLED
        await self._transition(ending, self._state.cancel_reason or "the venue never received the order")

    def _ending(self) -> OrderState | None:
        """The end a cancel under way (or a passed expire_at) gives the order, if any."""
        if self._state.cancel_target is not None:
            return self._state.cancel_target
        snap = self._state.snapshot
        if snap.expire_at is not None and workflow.now() >= snap.expire_at:
            return S.EXPIRED
        return S.CANCELLED if self._state.cancel_request is not None else None

    async def _backoff(self) -> None:
        """The durable wait before a retry: none for the first, then doubling, capped, jittered."""
        streak = self._state.retry_streak
        if streak <= 0:
            return
        base_ms = max(self._state.context.params.retry_delay_ms, 100)
        cap_ms = RETRY_BACKOFF_MAX.total_seconds() * 1000
        delay_ms = min(base_ms * 2 ** min(streak - 1, 30), cap_ms) * (0.5 + workflow.random().random() / 2)
        await workflow.sleep(timedelta(milliseconds=delay_ms), summary="backoff before asking the venue again")

    # --- tracking ------------------------------------------------------------------------------
    async def _track_once(self) -> None:
        """Wait for a request or the next poll, then act on it."""
        snap = self._state.snapshot
        if snap.state == S.UNKNOWN:
            await self._reconcile()
            return
        if self._state.cancel_request is not None or self._state.cancel_target is not None:
            for pending in self._state.amend_requests:  # answered now: a cancel may take a while
                self._state.amend_results[pending.id] = "order is being cancelled"
            self._state.amend_requests = []
            await self._cancel_at_venue()
            return
        if self._state.amend_requests:
            await self._amend_at_venue(self._take_amend())
            return
        if snap.expire_at is not None and workflow.now() >= snap.expire_at:
            await self._cancel_at_venue()
            return
        self._state.retry_streak = 0  # quiet: live at the venue, nothing pending
        if self._state.poll_interval_ms is None:
            first_ms = POLL_FIRST.total_seconds() * 1000
            self._state.poll_interval_ms = int(first_ms * (0.5 + workflow.random().random()))
        interval = timedelta(milliseconds=self._state.poll_interval_ms)
        if snap.expire_at is not None:
            interval = min(interval, snap.expire_at - workflow.now())
        gtd_first = snap.expire_at is not None and workflow.now() + interval >= snap.expire_at
        woke = await self._wait(
            lambda: self._state.cancel_request is not None or bool(self._state.amend_requests)
            or bool(self._state.venue_updates), interval,
            "GTD expiry: cancel at the venue" if gtd_first else "fallback poll of the venue (no update pushed)")
        if self._state.venue_updates:
            # Pushed by the account poller; each report has the whole order, so the latest one wins.
            report, self._state.venue_updates = self._state.venue_updates[-1], []
            if not report.fills_complete and (report.filled_quantity > snap.filled_quantity
                                              or report.status not in OPEN_STATUSES):
                report = await self._fetch_quietly()  # listed without its trades: fetch them
                if report is None:
                    return
            await self._apply_report(report)
            return
        if woke:
            return  # a cancel or amend request: handled on the next turn
        report = await self._fetch_quietly()
        if report is not None:
            before = snap.filled_quantity
            await self._apply_report(report)
            # Back off while nothing happens; look again soon after a fill.
            self._state.poll_interval_ms = (
                int(POLL_AFTER_FILL.total_seconds() * 1000) if snap.filled_quantity != before
                else min(self._state.poll_interval_ms * 2, int(POLL_MAX.total_seconds() * 1000)))

    async def _fetch_quietly(self) -> VenueOrderReport | None:
        try:
            return await self._venue("venue_fetch", self._ref())
        except VENUE_ERRORS as error:
            workflow.logger.warning("fill poll failed: %s", _error_message(error))
            return None

    async def _cancel_at_venue(self) -> None:
        """One cancel attempt (after the backoff if it is a retry). A cancel that did not take, or
        whose answer was lost, is tried again on a later turn; it ends the order in cancel_target."""
        if self._state.cancel_target is None:
            request = self._state.cancel_request
            self._state.cancel_target = S.CANCELLED if request is not None else S.EXPIRED
            self._state.cancel_reason = (request.reason or "cancel requested") if request else "expire_at reached"
        await self._backoff()
        self._state.retry_streak += 1
        await self._transition(S.PENDING_CANCEL, self._state.cancel_reason)
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            kind = _error_type(error)
            if kind in NOTHING_SENT:  # the cancel never left: the order is live as it was
                snap = self._state.snapshot
                await self._transition(S.PARTIALLY_FILLED if snap.filled_quantity > 0 else S.ACCEPTED,
                                       f"cancel not sent: {_error_message(error)}")
            else:  # not found, refused, lost answer: what the venue holds is looked up (reconciled)
                await self._transition(S.UNKNOWN, f"cancel outcome unknown: {_error_message(error)}")
            return
        if report.status not in OPEN_STATUSES and not report.fills_complete:
            report = await self._fetch_quietly() or report  # the final fills (else reconciled)
        await self._apply_report(report)

    async def _amend_at_venue(self, pending: PendingAmend) -> None:
        refusal = self._amend_refusal(pending.request)
        if refusal is None and self._state.context.prices is not None:
            # Validated again at the venue's current price before anything reaches the venue.
            try:
                refusal = self._amend_refusal(pending.request, await self._read_prices())
            except VENUE_ERRORS as error:
                refusal = f"cannot read the venue's price to validate the amend: {_error_message(error)}"
        if refusal:
            workflow.logger.warning("amend refused, order unchanged: %s", refusal)
            self._state.amend_results[pending.id] = refusal
            return
        snap = self._state.snapshot
        back_to = snap.state
        await self._transition(S.PENDING_AMEND, None)
        new_qty = pending.request.quantity or snap.quantity
        new_price = pending.request.limit_price or snap.limit_price
        if self._state.native_amend:
            request = VenueAmendRequest(**self._ref().model_dump(), quantity=pending.request.quantity,
                                        limit_price=pending.request.limit_price)
            # In doubt from the moment it is sent: an answer lost to a timeout or to a workflow
            # cancellation mid-call leaves the venue holding either terms, and its next report says which.
            self._state.amend_in_doubt = pending.request
            try:
                report = await self._venue("venue_amend", request)
            except VENUE_ERRORS as error:
                kind = _error_type(error)
                if kind not in OUTCOME_UNKNOWN:
                    self._state.amend_in_doubt = None  # refused, or never sent: the old terms stand
                if kind == VenueErrorType.UNSUPPORTED.value:
                    self._state.native_amend = False
                else:
                    await self._amend_failed(pending, back_to, kind, error)
                    return
            else:
                self._state.amend_in_doubt = None
                snap.quantity, snap.limit_price = new_qty, new_price
                await self._apply_report(report)
                self._settle_after_amend(back_to)
                await self._publish()
                self._state.amend_results[pending.id] = None
                return
        await self._cancel_and_replace(pending, new_qty, new_price, back_to)

    async def _amend_failed(self, pending: PendingAmend, back_to: OrderState, kind: str, error: BaseException) -> None:
        message = f"venue refused the amend: {_error_message(error)}"
        if kind in OUTCOME_UNKNOWN:
            await self._transition(S.UNKNOWN, f"amend outcome unknown: {_error_message(error)}")
            self._state.amend_results[pending.id] = "amend outcome unknown; order reconciled, check its state"
            return
        self._settle_after_amend(back_to, message)
        await self._publish()
        self._state.amend_results[pending.id] = message

    def _settle_after_amend(self, back_to: OrderState, reason: str | None = None) -> None:
        snap = self._state.snapshot
        if snap.state == S.PENDING_AMEND:
            target = S.PARTIALLY_FILLED if snap.filled_quantity > 0 else S.ACCEPTED
            apply(snap, target if back_to != S.SUBMITTED else S.ACCEPTED, workflow.now(), reason)

    async def _cancel_and_replace(self, pending: PendingAmend, new_qty: Decimal, new_price: Decimal | None,
                                  back_to: OrderState) -> None:
        """Amend where the venue has none. The old order's end is confirmed first (its terminal
        status with its final fills, fetched if the cancel's answer is not final), and only then is
        the replacement placed: never two live orders."""
        if not self._v2:
            await self._cancel_and_replace_v1(pending, new_qty, new_price, back_to)
            return
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            kind = _error_type(error)
            await self._amend_failed(pending, back_to, "timeout" if kind == VenueErrorType.NOT_FOUND.value else kind,
                                     error)
            return
        report = await self._confirm_ended(report)
        snap = self._state.snapshot
        await self._apply_fills(report)
        if report.status in OPEN_STATUSES or report.status not in (
                VenueOrderStatus.CANCELLED, VenueOrderStatus.EXPIRED, VenueOrderStatus.FILLED) or not report.fills_complete:
            # Not confirmed: no replacement. What the venue holds is reconciled.
            await self._transition(S.UNKNOWN, f"cancel-and-replace: the old order's end is not confirmed "
                                              f"(venue says {report.status.value})")
            self._state.amend_results[pending.id] = "amend not applied: the venue did not confirm the cancel"
            return
        if snap.filled_quantity >= new_qty or report.status == VenueOrderStatus.FILLED:
            if snap.filled_quantity >= new_qty:
                snap.quantity = snap.filled_quantity  # the amend asked for no more than is filled
            message = ("order filled before the amend could apply" if snap.filled_quantity >= snap.quantity
                       else f"the venue ended the order at {snap.filled_quantity} of {snap.quantity}")
            if not snap.is_terminal:
                apply(snap, S.FILLED if snap.filled_quantity >= snap.quantity else S.CANCELLED, workflow.now(), message)
            await self._publish()
            self._state.amend_results[pending.id] = message
            return
        original = (snap.quantity, snap.limit_price)
        self._next_generation(new_qty, new_price)
        await self._transition(S.ACCEPTED if snap.filled_quantity == 0 else S.PARTIALLY_FILLED,
                               "replaced (cancel-and-replace amend)")
        try:
            report = await self._venue("venue_submit", self._replacement_request())
        except VENUE_ERRORS as error:
            if _error_type(error) != VenueErrorType.REJECTED.value or self._state.context.prices is None:
                self._state.amend_results[pending.id] = f"replacement order: {_error_message(error)}"
                await self._on_submit_error(error)
                return
            await self._restore_after_refused_replacement(pending, original, error)
            return
        await self._apply_report(report)
        self._state.amend_results[pending.id] = None

    async def _confirm_ended(self, report: VenueOrderReport) -> VenueOrderReport:
        """Fetch (after backoffs) until the venue shows the order ended with all its fills, at most
        CONFIRM_CANCEL_ATTEMPTS times; returns the last answer, confirmed or not."""
        params = self._state.context.params
        delay_ms = max(params.retry_delay_ms, 100)
        for _ in range(CONFIRM_CANCEL_ATTEMPTS):
            if report.status not in OPEN_STATUSES and report.status != VenueOrderStatus.NOT_FOUND \
                    and report.fills_complete:
                return report
            await workflow.sleep(timedelta(milliseconds=delay_ms * (0.5 + workflow.random().random() / 2)),
                                 summary="cancel-and-replace: wait, then confirm the cancel")
            delay_ms = min(delay_ms * 2, RETRY_BACKOFF_MAX.total_seconds() * 1000)
            report = await self._fetch_quietly() or report
        return report

    def _next_generation(self, quantity: Decimal, limit_price: Decimal | None) -> None:
        """The order's next venue order (cancel-and-replace): a new client order id and its terms."""
        snap = self._state.snapshot
        self._state.generation += 1
        snap.client_order_id = client_order_id_for(snap.order_id, self._state.generation)
        snap.venue_order_id = None  # the new venue order's, once the venue acknowledges it
        snap.quantity, snap.limit_price = quantity, limit_price

    def _replacement_request(self) -> VenueOrderRequest:
        snap = self._state.snapshot
        return VenueOrderRequest(
            exchange=snap.exchange, account=self._state.context.account, client_order_id=snap.client_order_id,
            symbol=snap.symbol, side=snap.side, order_type=snap.order_type,
            quantity=snap.quantity - snap.filled_quantity, limit_price=snap.limit_price, time_in_force=TimeInForce.GTC)

    async def _restore_after_refused_replacement(self, pending: PendingAmend, original: tuple[Decimal, Decimal | None],
                                                 refused: BaseException) -> None:
        """The venue refused the amended replacement although it passed our validation. The working
        order is not dropped: its remainder is placed again at the original terms (which the venue
        took before) under the next client order id, and the amend answers with the refusal."""
        why = f"venue refused the amended replacement ({_error_message(refused)})"
        await self._transition(S.PENDING_AMEND, f"{why}; placing the original terms again")
        self._next_generation(*original)
        try:
            report = await self._venue("venue_submit", self._replacement_request())
        except VENUE_ERRORS as error:
            kind = _error_type(error)
            self._state.amend_results[pending.id] = f"{why}; placing the original terms again failed: {_error_message(error)}"
            if kind == VenueErrorType.REJECTED.value or kind in NOTHING_SENT:
                # The original was cancelled for the amend and the venue holds nothing: say so.
                await self._transition(S.CANCELLED, f"{why}; placing the original terms again failed "
                                                    f"({_error_message(error)}): the order is no longer working")
            else:  # it may be at the venue: reconciled by its client order id
                await self._transition(S.UNKNOWN, f"re-placing the original terms: {_error_message(error)}")
            return
        await self._apply_report(report)
        self._settle_after_amend(S.ACCEPTED, "original terms placed again after the venue refused the amend")
        await self._publish()
        self._state.amend_results[pending.id] = f"{why}; the order was placed again at its original terms"

    # --- applying what the venue says ----------------------------------------------------------
    def _adopt_amend_in_doubt(self, report: VenueOrderReport) -> None:
        """A native amend whose answer was lost took if the venue now holds its terms: the order
        takes them before counting fills (else fills past the old quantity would be refused while
        the venue made them). A report with the old terms leaves it in doubt: it may still land."""
        doubted, snap = self._state.amend_in_doubt, self._state.snapshot
        if doubted is None or report.client_order_id != snap.client_order_id or report.quantity is None:
            return
        took = ((doubted.quantity is None or report.quantity == doubted.quantity)
                and (doubted.limit_price is None or report.limit_price == doubted.limit_price)
                and report.quantity >= report.filled_quantity)
        if not took or not workflow.patched(AMEND_IN_DOUBT):
            return
        self._state.amend_in_doubt = None
        workflow.logger.info("amend whose answer was lost took at the venue: quantity %s, limit price %s",
                             report.quantity, report.limit_price)
        snap.quantity = doubted.quantity or snap.quantity
        snap.limit_price = doubted.limit_price or snap.limit_price

    async def _apply_fills(self, report: VenueOrderReport) -> None:
        snap = self._state.snapshot
        self._adopt_amend_in_doubt(report)
        for venue_fill in report.fills:
            fill = Fill(
                fill_id=f"{report.client_order_id}:{venue_fill.trade_id}", order_id=snap.order_id,
                strategy_id=snap.strategy_id, symbol=snap.symbol, side=snap.side,
                quantity=venue_fill.quantity, price=venue_fill.price, fee=venue_fill.fee,
                fee_currency=venue_fill.fee_currency, liquidity=venue_fill.liquidity, venue=snap.exchange,
                at=venue_fill.at,
            )
            try:
                if apply_fill(snap, fill, self._seen):
                    self._pending_fills.append(fill)
                    snap.record_fill(FillRecord(
                        trade_id=venue_fill.trade_id, quantity=venue_fill.quantity, price=venue_fill.price,
                        fee=venue_fill.fee, fee_currency=venue_fill.fee_currency,
                        liquidity=venue_fill.liquidity, at=venue_fill.at))
            except IllegalTransition as error:  # a fill the order cannot take: recorded, reconciled
                record_unforeseen(snap, error, workflow.now(), f"venue fill {venue_fill.trade_id}")
        if report.venue_order_id:
            snap.venue_order_id = report.venue_order_id
        if snap.average_fill_price is not None and snap.reference_price:
            sign = 1 if snap.side.value == "buy" else -1
            snap.slippage_bps = ((snap.average_fill_price - snap.reference_price) / snap.reference_price
                                 * 10_000 * sign).quantize(Decimal("0.01"))

    async def _apply_report(self, report: VenueOrderReport, cancel_target: OrderState = S.CANCELLED,
                            reason: str | None = None) -> None:
        """Fills first (each counted once), then the venue's status. A status this code does not
        know (a new VenueOrderStatus member) or "not found" for an order we hold is reconciled."""
        if not self._v2:
            await self._apply_report_v1(report, cancel_target, reason)
            return
        snap = self._state.snapshot
        await self._apply_fills(report)
        status, now = report.status, workflow.now()
        ending = self._state.cancel_target or S.CANCELLED
        why = self._state.cancel_reason if self._state.cancel_target else None
        if snap.is_terminal:
            pass  # its end is final; late fills were counted above
        elif status not in OPEN_STATUSES and not report.fills_complete and report.filled_quantity > snap.filled_quantity:
            apply(snap, S.UNKNOWN, now, f"venue says {status.value} with fills not yet listed; fetching them")
        elif status in OPEN_STATUSES:
            if snap.state in (S.SUBMITTED, S.UNKNOWN, S.PENDING_CANCEL):
                # Acknowledged, found live by reconciliation, or a cancel that did not take (yet).
                apply(snap, S.PARTIALLY_FILLED if snap.filled_quantity > 0 else S.ACCEPTED, now, None)
        elif status == VenueOrderStatus.FILLED:
            if snap.filled_quantity >= snap.quantity:
                apply(snap, S.FILLED, now, None)
            elif report.filled_quantity > snap.filled_quantity or not report.fills_complete:
                apply(snap, S.UNKNOWN, now, f"venue reports filled {report.filled_quantity} of {snap.quantity}; "
                                            "fetching the fills not yet seen")
            else:  # closed as filled short of the quantity: the venue ended the rest
                apply(snap, ending, now, why or f"the venue ended the order at {snap.filled_quantity} of "
                                                f"{snap.quantity}" + (f": {report.reason}" if report.reason else ""))
        elif status == VenueOrderStatus.CANCELLED:
            apply(snap, ending, now, why or report.reason or "cancelled at the venue")
        elif status == VenueOrderStatus.EXPIRED:
            apply(snap, S.EXPIRED, now, report.reason or "expired at the venue")
        elif status == VenueOrderStatus.REJECTED:
            apply(snap, S.REJECTED, now, report.reason or "rejected by the venue")
        else:
            apply(snap, S.UNKNOWN, now, f"venue answered {status.value!r}"
                  + (f": {report.reason}" if report.reason else "") + "; reconciling")
        await self._publish()

    # --- recording -----------------------------------------------------------------------------
    async def _transition(self, target: OrderState, reason: str | None) -> None:
        apply(self._state.snapshot, target, workflow.now(), reason)
        await self._publish()

    async def _publish(self) -> None:
        snap = self._state.snapshot
        new = snap.transitions[self._state.published_transitions:]
        fills, self._pending_fills = self._pending_fills, []
        anomalies = snap.anomalies - self._state.published_anomalies
        if not new and not fills and not anomalies:
            return
        if snap.tca is not None:
            snap.tca = order_tca(snap, snap.tca)
        workflow.set_current_details(current_details(snap))
        self._attributes.upsert(snap.state.value, snap.symbol, snap.exchange, snap.strategy_id)
        first = self._state.published_transitions
        events = [
            OrderEvent(event_id=f"{snap.order_id}:{first + i}", order_id=snap.order_id, state=t.state, at=t.at,
                       reason=t.reason, snapshot=snap)
            for i, t in enumerate(new)
        ]
        await workflow.execute_local_activity(
            "record_progress", OrderProgress(snapshot=snap, events=events, fills=fills,
                                             release_daily=self._unused_daily_slot(), anomalies=anomalies),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_interval=timedelta(seconds=5)),
            summary=f"record: {snap.state.value}" + (f", {len(fills)} fill(s)" if fills else ""),
        )
        self._state.published_transitions = len(snap.transitions)
        self._state.published_anomalies = snap.anomalies
        self._local_activity_at = workflow.info().get_current_history_length()
        if self._state.parent_order_id is not None:
            await self._report_to_parent()

    async def _report_to_parent(self) -> None:
        """A child tells its parent order what changed (the whole picture: a lost or repeated report
        is harmless). A parent that has ended no longer listens: nothing to tell it."""
        parent = workflow.get_external_workflow_handle(self._state.parent_order_id)
        try:
            await parent.signal("child_update", ChildReport.of(self._state.snapshot))
        except BaseException as error:  # noqa: B036 - a cancellation goes on; anything else is logged
            if is_cancelled_exception(error):
                raise
            workflow.logger.warning("parent %s not told of %s: %s", self._state.parent_order_id,
                                    self._state.snapshot.state.value, error)

    def _unused_daily_slot(self) -> DailyOrderReservation | None:
        """prepare_order reserved a daily-cap slot, and the order ended without ever going out."""
        context, snap = self._state.context, self._state.snapshot
        if context is None or context.daily_reservation is None:
            return None
        if context.daily_decision is None or not context.daily_decision.allowed:
            return None
        if not snap.is_terminal or any(t.state == S.SUBMITTED for t in snap.transitions):
            return None
        return context.daily_reservation

    async def _wait(self, condition, timeout: timedelta, summary: str | None = None) -> bool:
        """True if `condition` came true before `timeout` (its timer named `summary` in the UI)."""
        if timeout <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=timeout, timeout_summary=summary)
            return True
        except asyncio.TimeoutError:
            return False

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_BOUND

