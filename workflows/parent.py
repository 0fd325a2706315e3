"""ParentOrderWorkflow: one signal worked as several child orders (an execution algorithm or a split route).

The parent decides what goes out and when; it never speaks to a venue. Each child is a full
OrderWorkflow (id `order-<signal_id>-c<n>`, its own client order id, validation, rate limits,
reconciliation and crash safety) started as a child workflow with parent-close policy REQUEST_CANCEL
(a parent that stops leaves no live order unwatched) and search attribute `ParentOrderId`. Children
report every transition and fill by the `child_update` signal; the parent's books (oms/parent.py)
never overfill, take back what a refused, cancelled or expired child did not fill, and count late
fills. What each slice sends is decided when it goes out, and the child reads the venue's price
then (not at planning: bfx-hf-algo #52).

- twap: slices at their planned times (randomized by randomize_pct through workflow.random(), so
  a replay plans the same), each a market child, or an IOC limit at the price cap where the signal
  has a limit price: the cap is never breached, and what a slice could not fill is carried into
  the next; quantity still left after the schedule gets a few more tries, then the parent ends.
- iceberg: one resting limit child of display_quantity at a time, refilled when it ends.
- route (the router split an unpinned order): one child per leg, on the leg's venue.

Cancel (signal, update, or a Temporal cancellation) cancels every open child and places no new one;
amend changes what is left to work (quantity) or the price of what goes out next and of the open
children. History stays bounded: the parent continues as new, with its children's ids and states,
when no child is open (REQUEST_CANCEL applies when a run closes, continue-as-new included:
temporal#3666), and it never holds more than MAX_OPEN_CHILDREN at once.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, is_cancelled_exception
from temporalio.workflow import ParentClosePolicy

from workflows.order import ChildOrderInput, _parse_request
from workflows.search_attributes import EXCHANGE, ORDER_STATE, PARENT_ORDER_ID, STRATEGY_ID, SYMBOL

with workflow.unsafe.imports_passed_through():
    from activities.execution import OrderContext
    from activities.publish import OrderProgress
    from oms import algos
    from oms import parent as books
    from oms.events import OrderEvent
    from oms.generation import generate_order
    from oms.models import (
        AmendRequest,
        CancelRequest,
        ExecutionAlgo,
        ExecutionTiming,
        OrderSnapshot,
        TERMINAL_STATES,
        OrderState,
        OrderType,
        Signal,
        TimeInForce,
        Transition,
        client_order_id_for,
    )
    from oms.parent import ChildOrder, ChildReport, ParentOrderInput, ParentState, PendingParentAmend
    from oms.pricing import to_account_currency
    from oms.states import can_transition
    from oms.story import current_details
    from oms.states import apply_safely as apply
    from oms.validation import Denial, DenialReason, validate_order

S = OrderState

HISTORY_BOUND = 5_000  # events: continue as new (between children) well before Temporal's 51,200
CHILDREN_PER_RUN = 400  # children started in one run: continue as new before the 2,000 pending limit
MAX_OPEN_CHILDREN = 400  # in flight at once (DESIGN.md section 5: aim for under 500)
EXTRA_ATTEMPTS = 3  # children placed after the schedule for quantity given back, then the parent ends
EXTRA_DELAY = timedelta(seconds=2)  # before each: a venue that just refused gets a moment
SLICE_LEAD = timedelta(seconds=2)  # a TWAP slice's child starts this early (at most 3/4 of the gap), waiting on start_at
REFUSED_IN_A_ROW = 3  # iceberg: children refused in a row without a fill end the parent


def _initial_snapshot(signal: Signal, now: datetime, algo: str) -> OrderSnapshot:
    order_id = workflow.info().workflow_id
    return OrderSnapshot(
        order_id=order_id, signal_id=signal.signal_id, strategy_id=signal.strategy_id,
        client_order_id=client_order_id_for(order_id), symbol=signal.symbol, side=signal.side,
        order_type=signal.order_type or (OrderType.LIMIT if signal.limit_price else OrderType.MARKET),
        time_in_force=signal.time_in_force or (TimeInForce.GTD if signal.expire_at else TimeInForce.GTC),
        quantity=signal.quantity, limit_price=signal.limit_price, exchange=signal.exchange or "simulation",
        reference_price=signal.reference_price, created_at=now, updated_at=now,
        transitions=[Transition(state=S.CREATED, at=now)], expire_at=signal.expire_at, intent=signal.intent,
        algo=algo,
    )


def _details(snap: OrderSnapshot) -> str:
    """The Temporal UI's current details of a parent: the order's story, then its children."""
    lines = [current_details(snap), "", f"**{snap.algo} parent: {len(snap.children)} children**"]
    lines += [f"- `{c.order_id}` {c.state.value}: {c.filled_quantity} of {c.quantity} on {c.exchange}"
              for c in snap.children[-20:]]
    return "\n".join(lines)


def _milestones(children: list) -> list[tuple[str, bool]]:
    return [(c.order_id, c.state in TERMINAL_STATES) for c in children]


@workflow.defn(name="ParentOrderWorkflow")
class ParentOrderWorkflow:
    @workflow.init
    def __init__(self, order: ParentOrderInput) -> None:
        self._signal = order.signal
        self._route = order.route
        algo = order.signal.execution.algo.value if order.signal.execution and order.signal.execution.algo else "route"
        self._state = order.state or ParentState(snapshot=_initial_snapshot(order.signal, workflow.now(), algo))
        self._context: OrderContext | None = None  # market and limits, read once (what later runs need is in the state)
        self._lock = asyncio.Lock()  # amend_order awaits the children's signals: one at a time
        self._changed = False  # a child report, cancel or amend arrived: the loop looks again
        self._handing_over = False
        self._started_this_run = 0

    # --- public interface (the same names and arguments as OrderWorkflow) ----------------------
    @workflow.query(name="status")
    def status(self) -> OrderSnapshot:
        return self._state.snapshot

    @workflow.signal(name="cancel")
    def cancel(self, raw: Any) -> None:
        try:
            request = _parse_request(CancelRequest, raw)
        except ApplicationError as error:
            workflow.logger.warning("cancel signal refused, order unchanged: %s", error)
            return
        if not self._state.snapshot.is_terminal and self._state.cancel_request is None:
            self._state.cancel_request = request
            self._changed = True

    @workflow.signal(name="amend")
    def amend(self, raw: Any) -> None:
        try:
            request = _parse_request(AmendRequest, raw)
        except ApplicationError as error:
            workflow.logger.warning("amend signal refused, order unchanged: %s", error)
            return
        refusal = self._amend_refusal(request)
        if refusal:
            workflow.logger.warning("amend signal refused, order unchanged: %s", refusal)
            return
        self._state.amend_requests.append(PendingParentAmend(request=request, id=str(workflow.uuid4())))
        self._changed = True

    @workflow.signal(name="child_update")
    def child_update(self, report: ChildReport) -> None:
        if books.apply_child_report(self._state, report):
            self._changed = True

    @workflow.update(name="cancel_order")
    async def cancel_order(self, raw: Any) -> OrderSnapshot:
        self.cancel(raw)
        await workflow.wait_condition(lambda: self._state.snapshot.is_terminal or self._handing_over)
        return self._state.snapshot

    @cancel_order.validator
    def _validate_cancel(self, raw: Any) -> None:
        _parse_request(CancelRequest, raw)
        if self._state.snapshot.is_terminal:
            raise ApplicationError(f"order is already {self._state.snapshot.state.value}", type="CancelRefused")

    @workflow.update(name="amend_order")
    async def amend_order(self, raw: Any) -> OrderSnapshot:
        request = _parse_request(AmendRequest, raw)
        async with self._lock:
            refusal = self._amend_refusal(request)  # again: the order may have moved since validation
            if refusal:
                raise ApplicationError(refusal, type="AmendRefused")
            await self._apply_amend(request)
            return self._state.snapshot

    @amend_order.validator
    def _validate_amend(self, raw: Any) -> None:
        refusal = self._amend_refusal(_parse_request(AmendRequest, raw))
        if refusal:
            raise ApplicationError(refusal, type="AmendRefused")

    def _amend_refusal(self, request: AmendRequest) -> str | None:
        snap, state = self._state.snapshot, self._state
        if snap.is_terminal:
            return f"order is already {snap.state.value}"
        if state.cancel_request is not None:
            return "order is being cancelled"
        if request.limit_price is not None and snap.limit_price is None:
            return "a parent order without a limit price has no limit price to amend"
        if request.quantity is not None:
            working = books.committed(state)
            if request.quantity <= snap.filled_quantity:
                return f"quantity {request.quantity} is not above the filled quantity {snap.filled_quantity}"
            if request.quantity < working:
                return (f"quantity {request.quantity} is below what is filled or working at the venues ({working}): "
                        "cancel instead, or wait for the open children")
            step = state.amount_step
            if step > 0 and request.quantity / step != (request.quantity / step).to_integral_value():
                return f"quantity {request.quantity} is not a multiple of the lot size {step}"
        return None

    async def _apply_amend(self, request: AmendRequest) -> None:
        snap = self._state.snapshot
        changes = []
        if request.quantity is not None and request.quantity != snap.quantity:
            changes.append(f"quantity {snap.quantity} -> {request.quantity}")
            snap.quantity = request.quantity
        if request.limit_price is not None and request.limit_price != snap.limit_price:
            changes.append(f"limit price {snap.limit_price} -> {request.limit_price}")
            snap.limit_price = request.limit_price
            for child in books.open_children(self._state):  # the resting ones take the new price too
                await self._signal_child(child, "amend", {"limit_price": str(request.limit_price)})
        if changes:
            snap.reason = "amended: " + ", ".join(changes)
            snap.updated_at = workflow.now()
            books.aggregate(self._state)
            await self._record(snapshot_only=True)
        self._changed = True

    # --- main flow -----------------------------------------------------------------------------
    @workflow.run
    async def run(self, order: ParentOrderInput) -> OrderSnapshot:
        try:
            await self._work()
        except BaseException as error:  # noqa: B036 - only a cancellation is handled here
            if not is_cancelled_exception(error):
                raise
            # A Temporal cancellation (UI, CLI): the parent's cancel, carried out shielded from it.
            if self._state.cancel_request is None:
                self._state.cancel_request = CancelRequest(reason="workflow cancellation requested")
            self._handing_over = False
            await asyncio.shield(asyncio.ensure_future(self._work()))
        return self._state.snapshot

    async def _work(self) -> None:
        if not self._state.prepared:
            if not await self._prepare():
                await self._close()
                return
        await self._wait_for_start()
        while not self._state.snapshot.is_terminal:
            self._changed = False  # whatever arrives from here on wakes the wait below
            await self._serve_amends()
            if self._state.cancel_request is not None:
                await self._cancel_children()
            elif not await self._place_due():
                if not books.open_children(self._state):
                    break  # nothing open and nothing more to place
            if self._should_continue_as_new():
                await self._hand_over()
            await self._settle()
            if self._state.cancel_request is not None and not books.open_children(self._state):
                break
            await self._wait_for_change()
        await self._close()

    async def _close(self) -> None:
        snap = self._state.snapshot
        books.aggregate(self._state)
        if not snap.is_terminal:
            target, reason = books.final_state(self._state)
            if self._state.plan_note and target != S.FILLED:
                reason = f"{reason}; {self._state.plan_note}" if reason else self._state.plan_note
            self._through_submitted(target)
            apply(snap, target, workflow.now(), reason)
        await self._record()
        await workflow.wait_condition(workflow.all_handlers_finished)

    def _through_submitted(self, target: OrderState) -> None:
        """A parent goes out (submitted) with its first child at a venue: recorded on the way to a
        state the table only reaches from there (children report their venue's answer at once)."""
        snap = self._state.snapshot
        if snap.state == S.VALIDATED and not can_transition(S.VALIDATED, target) and can_transition(S.SUBMITTED, target):
            apply(snap, S.SUBMITTED, workflow.now(), None)

    async def _read_context(self) -> OrderContext:
        signal = self._signal
        if self._route is not None and self._route.legs:
            signal = signal.model_copy(update={"exchange": self._route.legs[0].exchange})
        self._context = await workflow.execute_local_activity(
            "prepare_order", signal, result_type=OrderContext, start_to_close_timeout=timedelta(seconds=10),
            summary="prepare the parent: market rules, limits, prices",
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_interval=timedelta(seconds=10)),
            local_retry_threshold=timedelta(seconds=5),
        )
        return self._context

    async def _prepare(self) -> bool:
        """Read the venue's market and prices (the activity single orders use), validate the whole
        order and plan the algorithm. False: the parent ended (denied) before any child."""
        context = await self._read_context()
        snap, signal, state = self._state.snapshot, self._signal, self._state
        snap.exchange = context.exchange if self._route is None else "+".join(
            sorted({leg.exchange for leg in self._route.legs}))
        if context.problem or context.market is None:
            reason = DenialReason.UNKNOWN_EXCHANGE if "exchange" in (context.problem or "") else DenialReason.UNKNOWN_SYMBOL
            return await self._deny(Denial(reason=reason, message=context.problem or "no market data"))
        market = context.market
        mid = (context.bid + context.ask) / 2 if context.bid is not None and context.ask is not None else None
        whole = signal.model_copy(update={"execution": None})
        instruction = generate_order(whole, context.params, context.exchange, market, mid, context.estimated_slippage_bps)
        snap.order_type, snap.time_in_force = instruction.order_type, instruction.time_in_force
        snap.reference_price = instruction.reference_price
        denial = validate_order(instruction, signal.side, market, context.limits, workflow.now(), context.prices,
                                signal.reference_price)
        if denial is not None:
            return await self._deny(denial)
        state.amount_step = market.amount_step
        price = signal.limit_price or mid
        minimum = algos.min_child_quantity(market, price)
        account_minimum = self._account_minimum(price)
        if account_minimum is not None and account_minimum > minimum:
            step = market.amount_step if market.amount_step > 0 else Decimal(1)
            minimum = (account_minimum / step).to_integral_value(rounding="ROUND_CEILING") * step
        if self._route is None:
            start = signal.execution.start_at if signal.execution and signal.execution.start_at else workflow.now()
            plan = algos.plan_algo(signal, market.model_copy(update={"min_amount": minimum}), price,
                                   workflow.random(), max(start, workflow.now()))
            if isinstance(plan, Denial):
                return await self._deny(plan)
            state.min_child_quantity = plan.min_child_quantity
            state.slice_weights = plan.slice_quantities
            state.slice_offsets_ms = plan.slice_offsets_ms
            state.slices = len(plan.slice_quantities)
            state.display_quantity = plan.display_quantity
            state.plan_note = plan.note
        else:
            state.min_child_quantity = minimum
        state.prepared = True
        apply(snap, S.VALIDATED, workflow.now(), state.plan_note or (self._route.reason if self._route else None))
        await self._record()
        return True

    def _account_minimum(self, price: Decimal | None) -> Decimal | None:
        """account_limits.min_order_size as a base quantity: every child must reach it too."""
        context = self._context
        if price is None or context.prices is None or context.limits.min_order_size <= 0:
            return None
        unit_value = to_account_currency(price, context.prices)
        if not unit_value:
            return None
        return Decimal(repr(context.limits.min_order_size)) * algos.NOTIONAL_MARGIN / unit_value

    async def _deny(self, denial: Denial) -> bool:
        apply(self._state.snapshot, S.DENIED, workflow.now(), str(denial))
        await self._record()
        return False

    async def _wait_for_start(self) -> None:
        start_at = self._signal.execution.start_at if self._signal.execution else None
        if start_at is not None and self._state.started_at is None and start_at > workflow.now():
            await self._wait(lambda: self._state.cancel_request is not None, start_at - workflow.now())
        if self._state.started_at is None:
            self._state.started_at = workflow.now()

    # --- placing children ----------------------------------------------------------------------
    async def _place_due(self) -> bool:
        """Place what is due now. False when nothing more will ever be placed."""
        state, snap = self._state, self._state.snapshot
        if snap.expire_at is not None and workflow.now() >= snap.expire_at:
            return False
        if len(books.open_children(state)) >= MAX_OPEN_CHILDREN:
            return True
        if self._route is not None:
            return await self._place_route()
        if self._signal.execution.algo == ExecutionAlgo.ICEBERG:
            return await self._place_iceberg()
        return await self._place_twap()

    async def _place_twap(self) -> bool:
        state = self._state
        while state.next_slice < state.slices and state.cancel_request is None:
            due = self._slice_due(state.next_slice)
            if workflow.now() < self._slice_launch(state.next_slice):
                return True
            index = state.next_slice
            state.next_slice += 1
            quantity = algos.twap_slice_quantity(index, state.slice_weights, books.left_to_work(state),
                                                 state.amount_step, state.min_child_quantity)
            if quantity > 0:
                await self._start_child(quantity, index, due, start_at=due if due > workflow.now() else None)
        return await self._place_leftover()

    async def _place_leftover(self) -> bool:
        """After the schedule (or all route legs): quantity given back is tried again a few times."""
        state = self._state
        if books.open_children(state):
            return True
        left = books.left_to_work(state)
        if left < state.min_child_quantity or state.extra_attempts >= EXTRA_ATTEMPTS:
            return False
        state.extra_attempts += 1
        await self._wait(lambda: self._state.cancel_request is not None, EXTRA_DELAY)
        if state.cancel_request is None:
            await self._start_child(left, None, None)
        return True

    async def _place_iceberg(self) -> bool:
        state = self._state
        if books.open_children(state):
            return True
        self._count_refusals()
        left = books.left_to_work(state)
        if left < state.min_child_quantity or state.refused_in_a_row >= REFUSED_IN_A_ROW:
            return False
        quantity = min(state.display_quantity, left)
        if left - quantity < state.min_child_quantity:
            quantity = left  # a remainder no child could carry goes with this one
        await self._start_child(quantity, None, None)
        return True

    async def _place_route(self) -> bool:
        state = self._state
        if not state.children:
            for leg in self._route.legs:
                if state.cancel_request is None:
                    await self._start_child(leg.quantity, None, None, exchange=leg.exchange)
            return True
        return await self._place_leftover()

    def _count_refusals(self) -> None:
        last = self._state.children[-1] if self._state.children else None
        if last is not None and last.is_terminal:
            failed = last.filled_quantity == 0 and last.state in (S.DENIED, S.REJECTED, S.FAILED)
            self._state.refused_in_a_row = self._state.refused_in_a_row + 1 if failed else 0

    def _slice_due(self, index: int) -> datetime:
        return self._state.started_at + timedelta(milliseconds=self._state.slice_offsets_ms[index])

    def _slice_launch(self, index: int) -> datetime:
        """When slice `index`'s child is started: a little before it is due, with `start_at` = due, so
        the child is validated and waiting on its own timer when the time comes; it then reads the
        venue's price again and submits (the parent's timer, a workflow task and the child's start
        are not on the slice's path: bench/twap_schedule.py)."""
        if self._should_continue_as_new():
            return self._slice_due(index)  # no early child: the run hands over once the open ones end
        offsets = self._state.slice_offsets_ms
        gap_ms = offsets[index] - offsets[index - 1] if index > 0 else 0
        return self._slice_due(index) - min(SLICE_LEAD, timedelta(milliseconds=gap_ms * 3 / 4))

    def _child_signal(self, quantity: Decimal, exchange: str, start_at: datetime | None = None) -> Signal:
        """The child's own order: the parent's terms for this quantity, on this venue, placed at
        `start_at` (or now)."""
        signal, snap = self._signal, self._state.snapshot
        update: dict = {"quantity": quantity, "exchange": exchange, "limit_price": snap.limit_price,
                        "execution": ExecutionTiming(start_at=start_at) if start_at else None}
        if self._route is None and signal.execution.algo == ExecutionAlgo.TWAP:
            # Market slices; with a price cap, IOC limits at the cap (never breached: the rest returns).
            update.update(time_in_force=TimeInForce.IOC if snap.limit_price else None, expire_at=None,
                          order_type=OrderType.LIMIT if snap.limit_price else OrderType.MARKET)
        return signal.model_copy(update=update)

    async def _start_child(self, quantity: Decimal, index: int | None, planned: datetime | None,
                           exchange: str | None = None, start_at: datetime | None = None) -> None:
        state, snap = self._state, self._state.snapshot
        exchange = exchange or (self._route.legs[0].exchange if self._route is not None else snap.exchange)
        child = ChildOrder(order_id=books.child_id(snap.order_id, state.next_child), exchange=exchange,
                           quantity=quantity, slice_index=index, planned_at=planned, started_at=workflow.now())
        state.next_child += 1
        state.children.append(child)
        self._started_this_run += 1
        signal = self._child_signal(quantity, exchange, start_at)
        handle = await workflow.start_child_workflow(
            "OrderWorkflow", ChildOrderInput(signal=signal, parent_order_id=snap.order_id), id=child.order_id,
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            search_attributes=TypedSearchAttributes([
                SearchAttributePair(ORDER_STATE, "created"), SearchAttributePair(SYMBOL, signal.symbol),
                SearchAttributePair(EXCHANGE, exchange), SearchAttributePair(STRATEGY_ID, signal.strategy_id),
                SearchAttributePair(PARENT_ORDER_ID, snap.order_id)]),
            result_type=OrderSnapshot,
            static_summary=f"slice {index + 1 if index is not None else 'extra'}: {quantity} {snap.symbol} on {exchange}"
                           + (f" at {start_at.isoformat()}" if start_at else ""),
        )
        workflow.logger.info("child %s: %s %s on %s", child.order_id, quantity, snap.symbol, exchange)
        asyncio.ensure_future(self._watch(handle, child.order_id))
        books.aggregate(state)
        await self._settle()

    async def _watch(self, handle, order_id: str) -> None:
        """The child's end, from its result: a net under the signals (this run only)."""
        try:
            result: OrderSnapshot = await handle
        except BaseException as error:  # noqa: B036
            if is_cancelled_exception(error):
                return
            child = books.find_child(self._state, order_id)
            if child is not None and not child.is_terminal:
                child.state, child.reason = S.FAILED, f"child workflow ended without a result: {error}"
                self._changed = True
            return
        if books.apply_child_report(self._state, ChildReport.of(result)):
            self._changed = True

    # --- cancel, amend, waiting ----------------------------------------------------------------
    async def _cancel_children(self) -> None:
        reason = self._state.cancel_request.reason or "parent order cancelled"
        for child in books.open_children(self._state):
            if not child.cancel_sent:
                child.cancel_sent = True
                await self._signal_child(child, "cancel", {"reason": f"parent: {reason}"[:500]})

    async def _signal_child(self, child: ChildOrder, name: str, argument: dict) -> None:
        handle = workflow.get_external_workflow_handle(child.order_id)
        try:
            await handle.signal(name, argument)
        except BaseException as error:  # noqa: B036 - a child that has ended needs nothing more
            if is_cancelled_exception(error):
                raise
            workflow.logger.info("%s not sent to %s: %s", name, child.order_id, error)

    async def _serve_amends(self) -> None:
        """Amends that came as signals: applied in order, each checked again first."""
        while self._state.amend_requests:
            pending = self._state.amend_requests.pop(0)
            async with self._lock:
                refusal = self._amend_refusal(pending.request)
                if refusal:
                    workflow.logger.warning("amend refused, order unchanged: %s", refusal)
                    continue
                await self._apply_amend(pending.request)

    async def _wait_for_change(self) -> None:
        state = self._state
        timeout = None
        if (self._route is None and state.cancel_request is None and state.next_slice < state.slices
                and self._signal.execution.algo == ExecutionAlgo.TWAP):
            timeout = self._slice_launch(state.next_slice) - workflow.now()
        if state.snapshot.expire_at is not None:
            until_expiry = state.snapshot.expire_at - workflow.now()
            timeout = until_expiry if timeout is None else min(timeout, until_expiry)
        condition = lambda: self._changed or bool(self._state.amend_requests)  # noqa: E731
        if timeout is None:
            await workflow.wait_condition(condition)
        else:
            await self._wait(condition, timeout)

    async def _wait(self, condition, timeout: timedelta) -> bool:
        if timeout <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _settle(self) -> None:
        """The aggregate from the children's reports, recorded when it changed."""
        state, snap = self._state, self._state.snapshot
        before = snap.filled_quantity
        books.aggregate(state)
        target = books.working_state(state)
        if snap.is_terminal:
            return
        if target != snap.state or (target == S.PARTIALLY_FILLED and snap.filled_quantity != before):
            self._through_submitted(target)
            if can_transition(snap.state, target):
                apply(snap, target, workflow.now(), None)
        # Recorded with each transition (every fill is one), and when a child starts or ends: a
        # child's intermediate states show in the parent's `status` query, not as a storage call each.
        if len(snap.transitions) > state.published_transitions or \
                _milestones(snap.children) != _milestones(state.published_children):
            await self._record(snapshot_only=len(snap.transitions) == state.published_transitions)

    async def _record(self, snapshot_only: bool = False) -> None:
        """The parent's transitions on order_events and its row, the snapshot in the order cache.
        Its fills are its children's: they reach `executions` once, from the children."""
        snap, state = self._state.snapshot, self._state
        new = snap.transitions[state.published_transitions:]
        first = state.published_transitions
        events = [] if snapshot_only else [
            OrderEvent(event_id=f"{snap.order_id}:{first + i}", order_id=snap.order_id, state=t.state, at=t.at,
                       reason=t.reason, snapshot=snap) for i, t in enumerate(new)]
        release = None
        if self._context is not None and not state.daily_released and self._context.daily_decision is not None \
                and self._context.daily_decision.allowed:
            release = self._context.daily_reservation  # the parent places nothing itself: its slot goes back
        workflow.upsert_search_attributes([
            ORDER_STATE.value_set(snap.state.value), SYMBOL.value_set(snap.symbol),
            EXCHANGE.value_set(snap.exchange), STRATEGY_ID.value_set(snap.strategy_id)])
        await workflow.execute_local_activity(
            "record_progress", OrderProgress(snapshot=snap, events=events, release_daily=release),
            start_to_close_timeout=timedelta(seconds=10), summary=f"record the parent: {snap.state.value}",
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_interval=timedelta(seconds=5)))
        state.daily_released = state.daily_released or release is not None
        if not snapshot_only:
            state.published_transitions = len(snap.transitions)
        state.published_children = list(snap.children)
        workflow.set_current_details(_details(snap))

    # --- continue-as-new -----------------------------------------------------------------------
    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return (info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_BOUND
                or self._started_this_run >= CHILDREN_PER_RUN)

    async def _hand_over(self) -> None:
        """Only with no child open (a run's close would cancel them) and nothing queued."""
        if books.open_children(self._state) or self._state.amend_requests or self._state.cancel_request:
            return
        self._handing_over = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._handing_over = False
        if books.open_children(self._state) or self._state.amend_requests or self._state.cancel_request:
            return
        workflow.continue_as_new(ParentOrderInput(signal=self._signal, route=self._route, state=self._state))
