"""Parent orders: one signal worked as several child orders (pure; runs inside ParentOrderWorkflow).

A parent owns what is left to work; each child is an ordinary OrderWorkflow that owns its own venue
order. The parent's books are kept here: which children exist, what each may still fill, and the
aggregate the contract shows (state, filled_quantity, average_fill_price, fees, children). The
rules that keep an algorithm honest (DESIGN.md section 5):
- never overfill: a new child gets at most `left_to_work`, which counts every open child at its
  full quantity;
- a child refused, cancelled or expired gives its unfilled quantity back (it is not committed any
  more), so the algorithm works it later instead of under-executing;
- late fills are counted: a child's report is taken whenever it shows more (reports are monotone:
  a fill or a transition only ever adds), whatever the child's state.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field

from oms.models import (
    TERMINAL_STATES,
    AmendRequest,
    CancelRequest,
    ChildSummary,
    OrderSnapshot,
    OrderState,
    Signal,
)
from oms.routing import RoutePlan

S = OrderState


class ChildReport(BaseModel):
    """What a child OrderWorkflow signals to its parent (`child_update`) on each transition or fill."""

    order_id: str
    exchange: str
    quantity: Decimal
    state: OrderState
    filled_quantity: Decimal = Decimal(0)
    average_fill_price: Decimal | None = None
    fees: Decimal = Decimal(0)
    transitions: int = 0  # how many transitions the child has recorded: reports only ever grow
    reason: str | None = None

    @classmethod
    def of(cls, snap: OrderSnapshot) -> "ChildReport":
        return cls(order_id=snap.order_id, exchange=snap.exchange, quantity=snap.quantity, state=snap.state,
                   filled_quantity=snap.filled_quantity, average_fill_price=snap.average_fill_price,
                   fees=snap.fees, transitions=len(snap.transitions), reason=snap.reason)


class ChildOrder(BaseModel):
    """The parent's record of one child (its ids and last known state survive continue-as-new)."""

    order_id: str
    exchange: str
    quantity: Decimal
    state: OrderState = S.CREATED
    filled_quantity: Decimal = Decimal(0)
    average_fill_price: Decimal | None = None
    fees: Decimal = Decimal(0)
    transitions: int = 0
    reason: str | None = None
    slice_index: int | None = None  # the algorithm's slice this child works (None: a route leg)
    planned_at: datetime | None = None  # when the schedule wanted it out (TWAP)
    started_at: datetime | None = None  # when the parent started it
    cancel_sent: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def committed(self) -> Decimal:
        """What this child has filled or may still fill."""
        return self.filled_quantity if self.is_terminal else max(self.quantity, self.filled_quantity)

    def summary(self) -> ChildSummary:
        return ChildSummary(order_id=self.order_id, exchange=self.exchange, quantity=self.quantity,
                            filled_quantity=self.filled_quantity, state=self.state)


class PendingParentAmend(BaseModel):
    request: AmendRequest
    id: str


class ParentState(BaseModel):
    """Everything the parent knows; handed whole to continue-as-new."""

    snapshot: OrderSnapshot
    children: list[ChildOrder] = Field(default_factory=list)
    next_child: int = 1  # n of the next child id order-<signal_id>-c<n>
    prepared: bool = False  # market read and the whole order validated
    plan_note: str | None = None  # e.g. "slices merged: 10 asked, 4 sent (venue minimum)"
    slices: int = 0  # TWAP: slices planned
    slice_offsets_ms: list[int] = Field(default_factory=list)  # TWAP: each slice's time after started_at
    slice_weights: list[Decimal] = Field(default_factory=list)  # TWAP: each slice's share (randomized size)
    next_slice: int = 0  # TWAP: the next slice to send
    started_at: datetime | None = None
    amount_step: Decimal = Decimal(0)
    min_child_quantity: Decimal = Decimal(0)  # smallest quantity a child may carry (lot, venue minimums)
    display_quantity: Decimal | None = None  # iceberg
    refused_in_a_row: int = 0  # children refused or failed without a fill in a row: stops a hopeless loop
    extra_attempts: int = 0  # children placed after the schedule's end for returned quantity
    cancel_request: CancelRequest | None = None
    amend_requests: list[PendingParentAmend] = Field(default_factory=list)
    amend_results: dict[str, str | None] = Field(default_factory=dict)
    published_transitions: int = 0
    published_children: list[ChildSummary] = Field(default_factory=list)
    daily_released: bool = False


class ParentOrderInput(BaseModel):
    """What ParentOrderWorkflow starts from: the signal, the router's plan where the router split
    the order (one child per leg, on its venue), and on continue-as-new the parent's whole state."""

    signal: Signal
    route: RoutePlan | None = None
    state: ParentState | None = None


# --- bookkeeping -------------------------------------------------------------------------------
def child_id(parent_id: str, n: int) -> str:
    return f"{parent_id}-c{n}"


def find_child(state: ParentState, order_id: str) -> ChildOrder | None:
    for child in state.children:
        if child.order_id == order_id:
            return child
    return None


def apply_child_report(state: ParentState, report: ChildReport) -> bool:
    """Take a child's report if it says more than the parent knows; False for a stale or duplicate one
    (signals can arrive twice, and out of order with the child's result)."""
    child = find_child(state, report.order_id)
    if child is None:
        return False
    if (report.transitions, report.filled_quantity) <= (child.transitions, child.filled_quantity) \
            and not (report.state in TERMINAL_STATES and not child.is_terminal):
        return False
    child.state, child.transitions, child.reason = report.state, report.transitions, report.reason
    child.filled_quantity = max(child.filled_quantity, report.filled_quantity)
    child.average_fill_price, child.fees = report.average_fill_price, report.fees
    child.quantity = report.quantity  # an amend of the child (limit price) never raises it
    child.exchange = report.exchange
    return True


def open_children(state: ParentState) -> list[ChildOrder]:
    return [c for c in state.children if not c.is_terminal]


def filled(state: ParentState) -> Decimal:
    return sum((c.filled_quantity for c in state.children), Decimal(0))


def committed(state: ParentState) -> Decimal:
    return sum((c.committed for c in state.children), Decimal(0))


def left_to_work(state: ParentState) -> Decimal:
    """Quantity no child holds yet: the most a new child may carry (never an overfill)."""
    return max(state.snapshot.quantity - committed(state), Decimal(0))


def round_to_step(quantity: Decimal, step: Decimal) -> Decimal:
    if step <= 0:
        return quantity
    return (quantity / step).to_integral_value(rounding="ROUND_FLOOR") * step


def aggregate(state: ParentState) -> None:
    """The snapshot's contract fields from the children: filled, average price, fees, children."""
    snap = state.snapshot
    total = filled(state)
    notional = sum((c.filled_quantity * c.average_fill_price for c in state.children
                    if c.average_fill_price is not None), Decimal(0))
    snap.filled_quantity = total
    snap.average_fill_price = (notional / total) if total > 0 else None
    snap.fees = sum((c.fees for c in state.children), Decimal(0))
    snap.children = [c.summary() for c in state.children]
    if snap.average_fill_price is not None and snap.reference_price:
        sign = 1 if snap.side.value == "buy" else -1
        snap.slippage_bps = ((snap.average_fill_price - snap.reference_price) / snap.reference_price
                             * 10_000 * sign).quantize(Decimal("0.01"))


def working_state(state: ParentState) -> OrderState:
    """The aggregate state while the parent is working: partially_filled once anything filled,
    pending_cancel while a cancel is under way, accepted once a child is at a venue, else validated."""
    snap = state.snapshot
    if state.cancel_request is not None:
        return S.PENDING_CANCEL
    if snap.filled_quantity > 0:
        return S.PARTIALLY_FILLED
    if any(c.state not in (S.CREATED, S.VALIDATED, S.DENIED) for c in state.children):
        return S.ACCEPTED if any(c.state != S.SUBMITTED for c in state.children) else S.SUBMITTED
    return S.VALIDATED


def final_state(state: ParentState) -> tuple[OrderState, str | None]:
    """The aggregate end once no child is open and nothing more will be placed."""
    snap = state.snapshot
    if snap.filled_quantity >= snap.quantity:
        return S.FILLED, None
    short = f"{snap.filled_quantity} of {snap.quantity} filled"
    if state.cancel_request is not None:
        return S.CANCELLED, state.cancel_request.reason or f"cancel requested ({short})"
    ends = {c.state for c in state.children}
    if snap.filled_quantity == 0 and ends and ends <= {S.DENIED}:
        return S.DENIED, _last_reason(state, "every child order was denied")
    if snap.filled_quantity == 0 and ends and ends <= {S.DENIED, S.REJECTED, S.FAILED}:
        kind = S.REJECTED if S.REJECTED in ends else S.FAILED
        return kind, _last_reason(state, "every child order was refused")
    return S.EXPIRED, f"the algorithm ended with {short}" + (
        f" (last child: {state.children[-1].reason})" if state.children and state.children[-1].reason else "")


def _last_reason(state: ParentState, default: str) -> str:
    reason = state.children[-1].reason if state.children else None
    return f"{default}: {reason}" if reason else default
