"""OrderWorkflow: one order, from signal to terminal state, durable across any worker crash.

The workflow decides; activities do I/O. Every state change goes through `oms.states.apply` /
`apply_fill` (the transition table), then `_publish` records it (search attributes, the
`order_events` / `executions` streams, the order cache).

Venue calls are local activities (a normal activity hop costs ~45 ms on the submission path), each
attempted once per call; the retry loop is here, so the workflow chooses per error type:
- VenueRejected            -> rejected, never retried
- VenueTransient / RateLimited -> retried with exponential backoff (retry_attempts, retry_delay_ms)
- VenueUnknownOutcome, or no answer within execution_timeout_ms -> `unknown`, then reconciled by
  fetching the order by its client order id; only a confirmed NOT_FOUND resubmits (same client id,
  which the venue deduplicates anyway). Never a blind second order.
Cancel and amend arrive as signals or updates; the main loop carries them out, so every venue call
is made from one place and a cancel racing a fill ends in whatever the venue decided (late fills
are counted). History stays bounded: long-lived orders continue-as-new with their whole state.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.execution import OrderContext, PriceQuery
    from activities.limits import DailyOrderDecision, DailyOrderReservation
    from activities.publish import OrderProgress
    from oms.events import OrderEvent
    from oms.generation import generate_order
    from oms.models import (
        AmendRequest,
        CancelRequest,
        Fill,
        OrderSnapshot,
        OrderState,
        OrderType,
        Signal,
        TimeInForce,
        Transition,
        client_order_id_for,
    )
    from oms.pricing import VenuePrices
    from oms.states import apply, apply_fill
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
ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")
EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
STRATEGY_ID = SearchAttributeKey.for_keyword("StrategyId")

# A failed local activity surfaces as ActivityError, or as its ApplicationError / TimeoutError itself.
VENUE_ERRORS = (ActivityError, ApplicationError, TemporalTimeoutError)
# Errors after which the venue certainly holds no order: retried, then `failed`, never `unknown`.
NOTHING_SENT = {VenueErrorType.TRANSIENT.value, VenueErrorType.RATE_LIMITED.value, VenueErrorType.CIRCUIT_OPEN.value}
# The venue asked us to stay away (429/418) or its breaker is open: wait as long as told, durably,
# without spending a retry attempt, up to the order's max_venue_wait_s in all.
VENUE_BUSY = {VenueErrorType.RATE_LIMITED.value, VenueErrorType.CIRCUIT_OPEN.value}
BUSY_WAIT_MAX_S = 30.0
RECONCILE_BACKOFF_MAX = timedelta(seconds=10)
HISTORY_BOUND = 2_000  # events; continue-as-new before this (or when the server suggests it)
# Fill tracking: the per-account poller (workers/poller.py) pushes venue changes as `venue_update`
# signals, one venue call per account per second however many orders are open. The order's own
# polling is only the fallback (poller down): first after about POLL_FIRST (jittered so 10,000
# orders placed together do not poll together), then backing off to POLL_MAX. At 10,000 open
# orders that is ~5.6 requests/s in steady state, inside a 10/s exchange limit.
POLL_FIRST = timedelta(minutes=5)
POLL_AFTER_FILL = timedelta(seconds=5)
POLL_MAX = timedelta(minutes=30)
RECONCILE_ATTEMPTS = 20
LOCAL_TASK_TIMEOUT = timedelta(seconds=30)
LOCAL_RETRY_THRESHOLD = timedelta(seconds=5)


class PendingAmend(BaseModel):
    request: AmendRequest
    id: str


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


def _error_type(error: BaseException) -> str:
    """The VenueErrorType of a failed activity call, or 'timeout'."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, TemporalTimeoutError):
        return "timeout"
    if isinstance(cause, ApplicationError):
        return cause.type or VenueErrorType.TRANSIENT.value
    return VenueErrorType.TRANSIENT.value


def _retry_after_s(error: BaseException) -> float | None:
    """The wait a RATE_LIMITED / CIRCUIT_OPEN error asks for (its first detail), if any."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        value = cause.details[0].get("retry_after_s")
        return float(value) if value is not None else None
    return None


def _error_message(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    return str(cause) or type(cause).__name__


@workflow.defn(name="OrderWorkflow")
class OrderWorkflow:
    @workflow.init
    def __init__(self, order: Signal | OrderWorkflowState) -> None:
        # Started with a Signal; continued-as-new with the whole state (one argument either way:
        # the SDK applies type hints only when the argument count matches).
        if isinstance(order, OrderWorkflowState):
            self._state = order
        else:
            self._state = OrderWorkflowState(signal=order, snapshot=_initial_snapshot(order, workflow.now()))
        self._seen = set(self._state.seen_fill_ids)
        self._pending_fills: list[Fill] = []
        self._lock = asyncio.Lock()

    # --- public interface ----------------------------------------------------------------------
    @workflow.query(name="status")
    def status(self) -> OrderSnapshot:
        return self._state.snapshot

    @workflow.signal(name="cancel")
    def cancel(self, request: CancelRequest) -> None:
        if not self._state.snapshot.is_terminal and self._state.cancel_request is None:
            self._state.cancel_request = request

    @workflow.signal(name="amend")
    def amend(self, request: AmendRequest) -> None:
        refusal = self._amend_refusal(request)
        if refusal is None:
            self._state.amend_requests.append(PendingAmend(request=request, id=str(workflow.uuid4())))
        else:
            workflow.logger.warning("amend signal refused, order unchanged: %s", refusal)

    @workflow.signal(name="venue_update")
    def venue_update(self, report: VenueOrderReport) -> None:
        """A change seen by the batched per-account poller; applied by the main loop."""
        if report.client_order_id == self._state.snapshot.client_order_id and not self._state.snapshot.is_terminal:
            self._state.venue_updates.append(report)

    @workflow.update(name="cancel_order")
    async def cancel_order(self, request: CancelRequest) -> OrderSnapshot:
        self.cancel(request)
        await workflow.wait_condition(lambda: self._state.snapshot.is_terminal)
        return self._state.snapshot

    @cancel_order.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._state.snapshot.is_terminal:
            raise ApplicationError(f"order is already {self._state.snapshot.state.value}", type="CancelRefused")

    @workflow.update(name="amend_order")
    async def amend_order(self, request: AmendRequest) -> OrderSnapshot:
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
    def _validate_amend(self, request: AmendRequest) -> None:
        refusal = self._amend_refusal(request)
        if refusal:
            raise ApplicationError(refusal, type="AmendRefused")

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
    async def run(self, order: Signal | OrderWorkflowState) -> OrderSnapshot:
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
            await self._track_once()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state.snapshot

    async def _prepare_and_validate(self) -> None:
        signal = self._state.signal
        context: OrderContext = await workflow.execute_local_activity(
            "prepare_order", signal, result_type=OrderContext,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=10)),
            local_retry_threshold=LOCAL_RETRY_THRESHOLD,  # a venue down for long: back off on durable timers
        )
        self._state.context = context
        snap = self._state.snapshot
        snap.exchange = context.exchange
        if context.problem or context.market is None:
            reason = DenialReason.UNKNOWN_EXCHANGE if "exchange" in (context.problem or "") else DenialReason.UNKNOWN_SYMBOL
            await self._deny(Denial(reason=reason, message=context.problem or "no market data"))
            return
        reference = None
        if context.bid is not None and context.ask is not None:
            reference = (context.bid + context.ask) / 2
        instruction = generate_order(signal, context.params, context.exchange, context.market, reference,
                                     context.estimated_slippage_bps)
        snap.order_type, snap.time_in_force = instruction.order_type, instruction.time_in_force
        snap.reference_price = instruction.reference_price
        if self._state.cancel_request is not None:
            await self._transition(S.CANCELLED, self._state.cancel_request.reason or "cancelled before submission")
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
                )
            if not decision.allowed:
                denial = Denial(reason=DenialReason.DAILY_ORDER_LIMIT,
                                message=f"max_daily_orders {context.limits.max_daily_orders} reached")
        if denial is not None:
            await self._deny(denial)
            return
        self._state.price_collar = instruction.price_collar
        routed = (f"routed to {context.exchange}: the {context.rerouted_from} circuit breaker is open"
                  if context.rerouted_from else None)
        # Published with the venue's answer (or before a start_at wait): fewer storage calls per order.
        apply(self._state.snapshot, S.VALIDATED, workflow.now(), routed)

    async def _deny(self, denial: Denial) -> None:
        await self._transition(S.DENIED, str(denial))

    async def _wait_for_start(self) -> None:
        signal = self._state.signal
        start_at = signal.execution.start_at if signal.execution else None
        waited = False
        if start_at is not None and start_at > workflow.now():
            await self._publish()
            if self._state.context.prices is None:  # a release-0.1 order waits as it did then
                await self._wait(lambda: self._state.cancel_request is not None, start_at - workflow.now())
            else:
                waited = True
                await self._wait_applying_amends(start_at)
        if self._state.cancel_request is not None:
            await self._transition(S.CANCELLED, self._state.cancel_request.reason or "cancelled before submission")
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
                             start_at - workflow.now())

    def _apply_amends_before_placement(self) -> bool:
        """Whether any amend applied."""
        snap, applied = self._state.snapshot, False
        while self._state.amend_requests:
            pending = self._state.amend_requests.pop(0)
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
            start_to_close_timeout=timedelta(seconds=10),
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

    async def _read_prices(self) -> VenuePrices:
        context, snap = self._state.context, self._state.snapshot
        return await workflow.execute_local_activity(
            "read_prices", PriceQuery(exchange=snap.exchange, symbol=snap.symbol, quote_currency=context.market.quote,
                                      account_currency=context.limits.currency),
            result_type=VenuePrices, start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=5,
                                     non_retryable_error_types=[VenueErrorType.REJECTED.value]),
        )

    # --- venue calls ---------------------------------------------------------------------------
    def _ref(self) -> VenueOrderRef:
        snap = self._state.snapshot
        return VenueOrderRef(exchange=snap.exchange, account=self._state.context.account,
                             client_order_id=snap.client_order_id, symbol=snap.symbol)

    async def _venue(self, activity: str, arg: BaseModel, attempts: int | None = None) -> VenueOrderReport:
        """One venue call with the order's retry policy for transient errors; raises on the rest."""
        params = self._state.context.params
        attempts = params.retry_attempts + 1 if attempts is None else attempts
        delay = timedelta(milliseconds=max(params.retry_delay_ms, 1))
        attempt, busy = 1, 0
        while True:
            try:
                return await workflow.execute_local_activity(
                    activity, arg, result_type=VenueOrderReport,
                    start_to_close_timeout=timedelta(milliseconds=params.execution_timeout_ms),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                    local_retry_threshold=LOCAL_TASK_TIMEOUT,
                )
            except VENUE_ERRORS as error:
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
                        await workflow.sleep(timedelta(seconds=wait))
                        continue
                if kind not in NOTHING_SENT or attempt >= attempts:
                    raise
                workflow.logger.info("%s attempt %d failed (%s), retrying in %s", activity, attempt, kind, delay)
                await workflow.sleep(delay)
                attempt += 1
                delay = min(delay * 2, timedelta(seconds=30))

    async def _submit(self) -> None:
        # Published together with the venue's answer: one storage call fewer on the hot path.
        apply(self._state.snapshot, S.SUBMITTED, workflow.now(), None)
        try:
            report = await self._venue("venue_submit", self._submission())
        except VENUE_ERRORS as error:
            await self._on_submit_error(error)
            return
        await self._apply_report(report)

    def _submission(self) -> VenueOrderRequest:
        """The venue order. GTD is enforced by our durable timer (not every venue has it); a market
        order with a reference price goes out as an IOC limit at its price collar, so nothing
        executes beyond max_slippage_bps."""
        snap = self._state.snapshot
        order_type, price, tif = snap.order_type, snap.limit_price, snap.time_in_force
        if tif == TimeInForce.GTD:
            tif = TimeInForce.GTC
        collar = self._state.price_collar
        if order_type == OrderType.MARKET and collar is not None and self._state.context.market:
            step = self._state.context.market.price_step
            rounding = ROUND_FLOOR if snap.side.value == "buy" else ROUND_CEILING
            order_type, price = OrderType.LIMIT, (collar / step).to_integral_value(rounding=rounding) * step
            tif = TimeInForce.FOK if tif == TimeInForce.FOK else TimeInForce.IOC
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
        """Resolve `unknown` by asking the venue about our client order id; resubmit only if absent."""
        delay = timedelta(milliseconds=max(self._state.context.params.retry_delay_ms, 100))
        for _ in range(RECONCILE_ATTEMPTS):
            try:
                report = await self._venue("venue_fetch", self._ref())
            except VENUE_ERRORS as error:
                workflow.logger.warning("reconcile fetch failed: %s", _error_message(error))
                await workflow.sleep(delay)
                delay = min(delay * 2, RECONCILE_BACKOFF_MAX)
                continue
            if report.status == VenueOrderStatus.NOT_FOUND:
                if self._state.cancel_request is not None:
                    await self._transition(S.CANCELLED, "cancelled; the venue never received the order")
                    return
                await self._submit()
                if self._state.snapshot.state != S.UNKNOWN:
                    return
                # Still unknown (an earlier request may yet land at the venue): look again later.
                await workflow.sleep(delay)
                delay = min(delay * 2, RECONCILE_BACKOFF_MAX)
                continue
            await self._apply_report(report)
            return
        await self._transition(S.UNKNOWN, "venue unreachable during reconciliation; will keep trying")

    # --- tracking ------------------------------------------------------------------------------
    async def _track_once(self) -> None:
        """Wait for a request or the next poll, then act on it."""
        snap = self._state.snapshot
        if snap.state == S.UNKNOWN:
            await self._reconcile()
            return
        if self._state.cancel_request is not None:
            await self._cancel_at_venue(self._state.cancel_request.reason or "cancel requested", S.CANCELLED)
            return
        if self._state.amend_requests:
            await self._amend_at_venue(self._state.amend_requests.pop(0))
            return
        if snap.expire_at is not None and workflow.now() >= snap.expire_at:
            await self._cancel_at_venue("expire_at reached", S.EXPIRED)
            return
        if self._state.poll_interval_ms is None:
            first_ms = POLL_FIRST.total_seconds() * 1000
            self._state.poll_interval_ms = int(first_ms * (0.5 + workflow.random().random()))
        interval = timedelta(milliseconds=self._state.poll_interval_ms)
        if snap.expire_at is not None:
            interval = min(interval, snap.expire_at - workflow.now())
        woke = await self._wait(
            lambda: self._state.cancel_request is not None or bool(self._state.amend_requests)
            or bool(self._state.venue_updates), interval)
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

    async def _cancel_at_venue(self, reason: str, final: OrderState) -> None:
        await self._transition(S.PENDING_CANCEL, reason)
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            if _error_type(error) == VenueErrorType.NOT_FOUND.value:
                await self._transition(final, reason)
                return
            await self._transition(S.UNKNOWN, f"cancel outcome unknown: {_error_message(error)}")
            return  # reconcile; the cancel request stays and is retried
        await self._apply_report(report, cancel_target=final, reason=reason)

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
            try:
                report = await self._venue("venue_amend", request)
            except VENUE_ERRORS as error:
                kind = _error_type(error)
                if kind == VenueErrorType.UNSUPPORTED.value:
                    self._state.native_amend = False
                else:
                    await self._amend_failed(pending, back_to, kind, error)
                    return
            else:
                snap.quantity, snap.limit_price = new_qty, new_price
                await self._apply_report(report)
                self._settle_after_amend(back_to)
                await self._publish()
                self._state.amend_results[pending.id] = None
                return
        await self._cancel_and_replace(pending, new_qty, new_price, back_to)

    async def _amend_failed(self, pending: PendingAmend, back_to: OrderState, kind: str, error: BaseException) -> None:
        message = f"venue refused the amend: {_error_message(error)}"
        if kind in ("timeout", VenueErrorType.UNKNOWN_OUTCOME.value):
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
        """Amend where the venue has none: the old order is confirmed cancelled before the new one
        is placed, so there are never two live orders."""
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            await self._amend_failed(pending, back_to, _error_type(error), error)
            return
        snap = self._state.snapshot
        await self._apply_fills(report)
        if snap.filled_quantity >= new_qty or report.status == VenueOrderStatus.FILLED:
            if snap.state != S.FILLED:
                snap.quantity = max(snap.filled_quantity, new_qty)
                apply(snap, S.FILLED, workflow.now(), "filled before the amend could apply")
            await self._publish()
            self._state.amend_results[pending.id] = "order filled before the amend could apply"
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

    def _next_generation(self, quantity: Decimal, limit_price: Decimal | None) -> None:
        """The order's next venue order (cancel-and-replace): a new client order id and its terms."""
        snap = self._state.snapshot
        self._state.generation += 1
        snap.client_order_id = client_order_id_for(snap.order_id, self._state.generation)
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
    async def _apply_fills(self, report: VenueOrderReport) -> None:
        snap = self._state.snapshot
        for venue_fill in report.fills:
            fill = Fill(
                fill_id=f"{report.client_order_id}:{venue_fill.trade_id}", order_id=snap.order_id,
                strategy_id=snap.strategy_id, symbol=snap.symbol, side=snap.side,
                quantity=venue_fill.quantity, price=venue_fill.price, fee=venue_fill.fee,
                fee_currency=venue_fill.fee_currency, liquidity=venue_fill.liquidity, venue=snap.exchange,
                at=venue_fill.at,
            )
            if apply_fill(snap, fill, self._seen):
                self._pending_fills.append(fill)
        if report.venue_order_id:
            snap.venue_order_id = report.venue_order_id
        if snap.average_fill_price is not None and snap.reference_price:
            sign = 1 if snap.side.value == "buy" else -1
            snap.slippage_bps = ((snap.average_fill_price - snap.reference_price) / snap.reference_price
                                 * 10_000 * sign).quantize(Decimal("0.01"))

    async def _apply_report(self, report: VenueOrderReport, cancel_target: OrderState = S.CANCELLED,
                            reason: str | None = None) -> None:
        snap = self._state.snapshot
        if snap.state in (S.SUBMITTED, S.UNKNOWN) and report.status == VenueOrderStatus.NEW and not report.fills:
            apply(snap, S.ACCEPTED, workflow.now(), None)
        await self._apply_fills(report)
        status = report.status
        if status == VenueOrderStatus.REJECTED:
            apply(snap, S.REJECTED, workflow.now(), report.reason or "rejected by the venue")
        elif status == VenueOrderStatus.CANCELLED and not snap.is_terminal:
            apply(snap, cancel_target, workflow.now(), reason or report.reason or "cancelled at the venue")
        elif status == VenueOrderStatus.EXPIRED and not snap.is_terminal:
            apply(snap, S.EXPIRED, workflow.now(), report.reason or "expired at the venue")
        elif status in OPEN_STATUSES and snap.state in (
                S.PENDING_CANCEL, S.UNKNOWN):
            # The cancel did not take (yet), or reconciliation found the order live.
            apply(snap, S.PARTIALLY_FILLED if snap.filled_quantity > 0 else S.ACCEPTED, workflow.now(), None)
        await self._publish()

    # --- recording -----------------------------------------------------------------------------
    async def _transition(self, target: OrderState, reason: str | None) -> None:
        apply(self._state.snapshot, target, workflow.now(), reason)
        await self._publish()

    async def _publish(self) -> None:
        snap = self._state.snapshot
        new = snap.transitions[self._state.published_transitions:]
        fills, self._pending_fills = self._pending_fills, []
        if not new and not fills:
            return
        workflow.upsert_search_attributes([
            ORDER_STATE.value_set(snap.state.value), SYMBOL.value_set(snap.symbol),
            EXCHANGE.value_set(snap.exchange), STRATEGY_ID.value_set(snap.strategy_id),
        ])
        first = self._state.published_transitions
        events = [
            OrderEvent(event_id=f"{snap.order_id}:{first + i}", order_id=snap.order_id, state=t.state, at=t.at,
                       reason=t.reason, snapshot=snap)
            for i, t in enumerate(new)
        ]
        await workflow.execute_local_activity(
            "record_progress", OrderProgress(snapshot=snap, events=events, fills=fills,
                                             release_daily=self._unused_daily_slot()),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_interval=timedelta(seconds=5)),
        )
        self._state.published_transitions = len(snap.transitions)

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

    async def _wait(self, condition, timeout: timedelta) -> bool:
        """True if `condition` came true before `timeout`."""
        if timeout <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_BOUND

