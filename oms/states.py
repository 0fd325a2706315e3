"""The order state machine: the transition table as data and one `apply` for every change.

Fills are not transitions of their own: `apply_fill` accumulates them and moves the order to
partially_filled / filled where the table allows; a fill arriving after the order reached
cancelled or expired (a cancel racing a fill) is still counted, the state stays terminal.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from oms.models import Fill, OrderSnapshot, OrderState, Transition

S = OrderState

TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.CREATED: frozenset({S.VALIDATED, S.DENIED, S.CANCELLED, S.FAILED}),
    S.VALIDATED: frozenset({S.SUBMITTED, S.DENIED, S.CANCELLED, S.EXPIRED, S.FAILED}),
    S.SUBMITTED: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.UNKNOWN, S.CANCELLED,
         S.PENDING_CANCEL, S.EXPIRED, S.FAILED}
    ),
    S.ACCEPTED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_AMEND, S.CANCELLED,
         S.EXPIRED, S.UNKNOWN}
    ),
    S.PARTIALLY_FILLED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_AMEND, S.CANCELLED,
         S.EXPIRED, S.UNKNOWN}
    ),
    # A cancel can lose the race against a fill: filled (or partially) is a legal outcome.
    S.PENDING_CANCEL: frozenset(
        {S.CANCELLED, S.FILLED, S.PARTIALLY_FILLED, S.ACCEPTED, S.EXPIRED, S.UNKNOWN}
    ),
    # An amend ends back in accepted / partially_filled (applied or refused by the venue),
    # or the order fills or ends meanwhile.
    S.PENDING_AMEND: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.EXPIRED,
         S.UNKNOWN}
    ),
    # Reconciliation resolves unknown to whatever the venue says; `submitted` only once the venue
    # has confirmed it never received the order.
    S.UNKNOWN: frozenset(
        {S.SUBMITTED, S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED,
         S.REJECTED, S.EXPIRED, S.FAILED, S.UNKNOWN}
    ),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.DENIED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.FAILED: frozenset(),
}

# Terminal states in which a late fill is still counted (the venue filled before it cancelled).
LATE_FILL_STATES = frozenset({S.CANCELLED, S.EXPIRED, S.PENDING_CANCEL})


class IllegalTransition(Exception):
    def __init__(self, current: OrderState, target: OrderState) -> None:
        super().__init__(f"illegal order transition {current.value} -> {target.value}")
        self.current = current
        self.target = target


def can_transition(current: OrderState, target: OrderState) -> bool:
    return target in TRANSITIONS[current]


def apply(order: OrderSnapshot, target: OrderState, at: datetime, reason: str | None = None) -> bool:
    """Move `order` to `target`, recording the transition. Returns False if it already is there.

    Re-applying the current state is a no-op (signals and activity results can arrive twice), except
    partially_filled which records each new fill level.
    """
    if order.state == target and target != S.PARTIALLY_FILLED:
        return False
    if not can_transition(order.state, target):
        raise IllegalTransition(order.state, target)
    if order.transitions and at < order.transitions[-1].at:
        # workflow.now() is the workflow task's start: after a local activity that outlived the
        # task it can read earlier than a transition already recorded. History never runs backwards.
        at = order.transitions[-1].at
    order.state = target
    order.updated_at = at
    if reason is not None:
        order.reason = reason
    order.transitions.append(Transition(state=target, at=at, reason=reason))
    return True


def fee_in_quote(fill: Fill, symbol: str) -> Decimal | None:
    """A fill's fee in the quote currency, as the order's `fees` are kept, sign kept (a maker
    rebate is a negative fee). Venues charge the asset received (a buy pays in base), valued at the
    fill's price. A third asset (a BNB discount) has no price here: None, and the order keeps it
    apart in `other_fees`, never summed as if it were quote."""
    base, quote = symbol.split("/", 1)
    if fill.fee_currency is None or fill.fee_currency == quote:
        return fill.fee
    if fill.fee_currency == base:
        return fill.fee * fill.price
    return None


def apply_fill(order: OrderSnapshot, fill: Fill, seen_fill_ids: set[str]) -> bool:
    """Count a fill once (by fill_id) and advance the state. Returns False for a duplicate."""
    if fill.fill_id in seen_fill_ids:
        return False
    if not order.state_allows_fill() and order.state not in LATE_FILL_STATES:
        raise IllegalTransition(order.state, S.PARTIALLY_FILLED)
    seen_fill_ids.add(fill.fill_id)
    notional = (order.average_fill_price or Decimal(0)) * order.filled_quantity
    order.filled_quantity += fill.quantity
    order.average_fill_price = (notional + fill.price * fill.quantity) / order.filled_quantity
    in_quote = fee_in_quote(fill, order.symbol)
    if in_quote is not None:
        order.fees += in_quote
    elif fill.fee:
        order.other_fees[fill.fee_currency] = order.other_fees.get(fill.fee_currency, Decimal(0)) + fill.fee
    order.updated_at = fill.at
    if order.state in (S.CANCELLED, S.EXPIRED):
        return True  # late fill: counted, state stays terminal
    target = S.FILLED if order.filled_quantity >= order.quantity else S.PARTIALLY_FILLED
    if order.state == S.PENDING_CANCEL and target == S.PARTIALLY_FILLED:
        return True  # still waiting for the cancel's answer
    apply(order, target, fill.at, None)
    return True
