"""The transition table as data: every listed transition applies, every other one is refused."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from oms.models import TERMINAL_STATES, Fill, OrderSnapshot, OrderState, Side
from oms.states import TRANSITIONS, IllegalTransition, apply, apply_fill, can_transition

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def order(state: OrderState = OrderState.CREATED, quantity: str = "1") -> OrderSnapshot:
    return OrderSnapshot(
        order_id="order-s1", signal_id="s1", strategy_id="st", client_order_id="order-s1",
        symbol="BTC/USDT", side=Side.BUY, order_type="limit", time_in_force="GTC",
        quantity=Decimal(quantity), limit_price=Decimal("100"), state=state, exchange="simulation",
        created_at=NOW, updated_at=NOW,
    )


def fill(n: int, quantity: str, price: str = "100") -> Fill:
    return Fill(
        fill_id=f"order-s1:{n}", order_id="order-s1", strategy_id="st", symbol="BTC/USDT",
        side=Side.BUY, quantity=Decimal(quantity), price=Decimal(price), fee=Decimal("0.01"),
        venue="simulation", at=NOW,
    )


def test_table_covers_every_state_and_terminal_states_are_final():
    assert set(TRANSITIONS) == set(OrderState)
    for state in TERMINAL_STATES:
        assert TRANSITIONS[state] == frozenset(), state
    for state in set(OrderState) - TERMINAL_STATES:
        assert TRANSITIONS[state], f"{state} must lead somewhere"


@pytest.mark.parametrize("current", list(OrderState))
@pytest.mark.parametrize("target", list(OrderState))
def test_every_pair_follows_the_table(current, target):
    snapshot = order(current)
    allowed = target in TRANSITIONS[current]
    if current == target and target != OrderState.PARTIALLY_FILLED:
        assert apply(snapshot, target, NOW) is False  # re-applying the current state is a no-op
        return
    if allowed:
        assert apply(snapshot, target, NOW, "why") is True
        assert snapshot.state == target
        assert snapshot.transitions[-1].state == target and snapshot.transitions[-1].reason == "why"
    else:
        with pytest.raises(IllegalTransition):
            apply(snapshot, target, NOW)
        assert snapshot.state == current and snapshot.transitions == []


def test_every_state_is_reachable_from_created():
    reached, frontier = {OrderState.CREATED}, [OrderState.CREATED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(OrderState)


def test_partial_fills_accumulate_to_filled_with_weighted_average_price():
    snapshot = order(OrderState.ACCEPTED, quantity="1")
    seen: set[str] = set()
    assert apply_fill(snapshot, fill(1, "0.25", "100"), seen)
    assert snapshot.state == OrderState.PARTIALLY_FILLED
    assert apply_fill(snapshot, fill(2, "0.75", "104"), seen)
    assert snapshot.state == OrderState.FILLED
    assert snapshot.filled_quantity == Decimal("1")
    assert snapshot.average_fill_price == Decimal("103")
    assert snapshot.fees == Decimal("0.02")


def test_a_fill_seen_twice_counts_once():
    snapshot = order(OrderState.ACCEPTED, quantity="1")
    seen: set[str] = set()
    assert apply_fill(snapshot, fill(1, "0.5"), seen)
    assert apply_fill(snapshot, fill(1, "0.5"), seen) is False
    assert snapshot.filled_quantity == Decimal("0.5")


def test_late_fill_after_cancel_is_counted_and_state_stays_cancelled():
    snapshot = order(OrderState.CANCELLED, quantity="1")
    assert apply_fill(snapshot, fill(1, "0.4"), set())
    assert snapshot.state == OrderState.CANCELLED
    assert snapshot.filled_quantity == Decimal("0.4")


def test_fill_while_cancel_pending_waits_for_the_cancel_answer_unless_complete():
    snapshot = order(OrderState.PENDING_CANCEL, quantity="1")
    seen: set[str] = set()
    apply_fill(snapshot, fill(1, "0.4"), seen)
    assert snapshot.state == OrderState.PENDING_CANCEL
    apply_fill(snapshot, fill(2, "0.6"), seen)
    assert snapshot.state == OrderState.FILLED  # the fill won the race


@pytest.mark.parametrize("state", [OrderState.CREATED, OrderState.VALIDATED, OrderState.DENIED,
                                   OrderState.REJECTED, OrderState.FILLED, OrderState.FAILED])
def test_fill_refused_where_no_order_can_be_at_the_venue(state):
    with pytest.raises(IllegalTransition):
        apply_fill(order(state), fill(1, "0.1"), set())


def test_can_transition_matches_table():
    assert can_transition(OrderState.UNKNOWN, OrderState.SUBMITTED)
    assert not can_transition(OrderState.FILLED, OrderState.CANCELLED)


def test_fees_are_kept_in_the_quote_currency_whatever_asset_the_venue_charged():
    """Venues charge the asset received: a buy's fee in base is valued at its fill price."""
    snapshot = order(OrderState.ACCEPTED, quantity="1")
    seen: set[str] = set()
    in_base = fill(1, "0.5", "100").model_copy(update={"fee": Decimal("0.0005"), "fee_currency": "BTC"})
    in_quote = fill(2, "0.5", "100").model_copy(update={"fee": Decimal("0.05"), "fee_currency": "USDT"})
    apply_fill(snapshot, in_base, seen)
    apply_fill(snapshot, in_quote, seen)
    assert snapshot.fees == Decimal("0.1")


def test_transition_times_never_run_backwards():
    snapshot = order(OrderState.SUBMITTED)
    later = NOW + timedelta(seconds=2)
    apply(snapshot, OrderState.UNKNOWN, later)
    apply(snapshot, OrderState.ACCEPTED, NOW)  # a clock read earlier than the last transition
    assert [t.at for t in snapshot.transitions][-2:] == [later, later]


@pytest.mark.parametrize("current,target", [
    (OrderState.ACCEPTED, OrderState.REJECTED),  # a cancel-and-replace replacement refused
    (OrderState.PARTIALLY_FILLED, OrderState.REJECTED),
    (OrderState.ACCEPTED, OrderState.FAILED),  # a replacement that never got out
    (OrderState.PARTIALLY_FILLED, OrderState.FAILED),
    (OrderState.PENDING_AMEND, OrderState.REJECTED),
    (OrderState.PENDING_CANCEL, OrderState.REJECTED),  # QuantConnect's late `invalid`
    (OrderState.SUBMITTED, OrderState.PENDING_AMEND),  # amend before the acknowledgement
])
def test_paths_the_workflow_takes_are_in_the_table(current, target):
    assert can_transition(current, target)


@pytest.mark.parametrize("state", sorted(set(OrderState) - TERMINAL_STATES - {OrderState.CREATED, OrderState.VALIDATED}))
def test_every_live_state_can_fall_back_to_unknown(state):
    assert can_transition(state, OrderState.UNKNOWN)


def test_an_unforeseen_transition_is_recorded_counted_and_reconciled_not_raised():
    from oms.states import apply_safely

    snapshot = order(OrderState.PENDING_AMEND)
    assert apply_safely(snapshot, OrderState.SUBMITTED, NOW, "venue said so") is False
    assert snapshot.state == OrderState.UNKNOWN and snapshot.anomalies == 1
    assert "pending_amend -> submitted" in snapshot.transitions[-1].reason
    assert "venue said so" in snapshot.last_anomaly
    # Before anything reached a venue there is nothing to reconcile: failed, with the reason.
    fresh = order(OrderState.CREATED)
    apply_safely(fresh, OrderState.FILLED, NOW)
    assert fresh.state == OrderState.FAILED and fresh.anomalies == 1
    # A terminal order keeps its end; the anomaly is still counted.
    done = order(OrderState.FILLED)
    apply_safely(done, OrderState.CANCELLED, NOW)
    assert done.state == OrderState.FILLED and done.anomalies == 1 and done.transitions == []


def test_a_fill_past_the_order_quantity_is_refused():
    snapshot = order(OrderState.PARTIALLY_FILLED, quantity="1")
    seen: set[str] = set()
    apply_fill(snapshot, fill(1, "0.6"), seen)
    with pytest.raises(IllegalTransition):
        apply_fill(snapshot, fill(2, "0.6"), seen)
    assert snapshot.filled_quantity == Decimal("0.6") and "order-s1:2" not in seen
