"""Execution algorithms' plans and the parent's books (pure: oms/algos.py, oms/parent.py)."""
import random
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from oms import parent as books
from oms.algos import AlgoPlan, min_child_quantity, plan_algo, twap_slice_quantity
from oms.models import OrderSnapshot, OrderState, Signal
from oms.parent import ChildOrder, ChildReport, ParentState
from oms.validation import Denial, DenialReason
from oms.venue import MarketInfo

D = Decimal
S = OrderState
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
ETH = MarketInfo(symbol="ETH/USDT", base="ETH", quote="USDT", amount_step=D("0.0001"), price_step=D("0.01"),
                 min_amount=D("0.0001"), min_notional=D("5"))


def signal(quantity="1", **fields) -> Signal:
    return Signal.model_validate({"signal_id": "s1", "strategy_id": "t", "symbol": "ETH/USDT", "side": "buy",
                                  "quantity": quantity, **fields})


def plan(sig: Signal, price=D("3000"), seed=7) -> AlgoPlan | Denial:
    return plan_algo(sig, ETH, price, random.Random(seed), NOW)


@pytest.mark.parametrize("quantity,slices,pct", [("1", 7, None), ("0.5003", 5, 20), ("2.0001", 13, 50), ("0.1", 1, 10)])
def test_twap_slices_are_lot_multiples_summing_exactly(quantity, slices, pct):
    result = plan(signal(quantity, execution={"algo": "twap", "slices": slices, "duration_s": 60, "randomize_pct": pct}))
    assert isinstance(result, AlgoPlan) and result.note is None
    assert sum(result.slice_quantities) == D(quantity) and len(result.slice_quantities) == slices
    assert all(q % ETH.amount_step == 0 and q >= result.min_child_quantity for q in result.slice_quantities)
    offsets = result.slice_offsets_ms
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < 60_000
    spacing = 60_000 / slices
    for i, offset in enumerate(offsets):
        assert abs(offset - i * spacing) <= spacing * (pct or 0) / 200 + 1


def test_randomize_pct_spreads_sizes_and_times_reproducibly():
    sig = signal("1", execution={"algo": "twap", "slices": 10, "duration_s": 100, "randomize_pct": 30})
    a, b, other = plan(sig, seed=1), plan(sig, seed=1), plan(sig, seed=2)
    assert a == b  # workflow.random() is seeded per run: a replay plans the same
    assert a.slice_quantities != other.slice_quantities and len(set(a.slice_quantities)) > 1
    assert a.slice_offsets_ms != [i * 10_000 for i in range(10)]


def test_slices_below_the_venue_minimum_are_merged_and_said():
    # 5 USDT min notional (+5 % margin) at 3000: 0.0018 ETH at least; 0.01 ETH makes 5 slices, not 20
    result = plan(signal("0.01", execution={"algo": "twap", "slices": 20, "duration_s": 60}))
    assert min_child_quantity(ETH, D("3000")) == D("0.0018")
    assert len(result.slice_quantities) == 5 and sum(result.slice_quantities) == D("0.01")
    assert result.note.startswith("20 slices asked, 5 sent")
    too_fast = plan(signal("1", execution={"algo": "twap", "slices": 30, "duration_s": 10}))
    assert len(too_fast.slice_quantities) == 10 and "at least 1 s apart" in too_fast.note


@pytest.mark.parametrize("execution,fields,reason,words", [
    ({"algo": "twap", "duration_s": 60}, {}, DenialReason.INVALID_ALGO_PARAMETERS, "needs duration_s and slices"),
    ({"algo": "twap", "slices": 3}, {}, DenialReason.INVALID_ALGO_PARAMETERS, "needs duration_s and slices"),
    ({"algo": "twap", "slices": 3, "duration_s": 60}, {"quantity": "0.001"}, DenialReason.INVALID_ALGO_PARAMETERS,
     "below the smallest slice"),
    ({"algo": "twap", "slices": 3, "duration_s": 60, "display_quantity": "0.1"}, {}, DenialReason.ALGO_NOT_SUPPORTED,
     "display_quantity applies to iceberg"),
    ({"algo": "twap", "slices": 3, "duration_s": 600}, {"time_in_force": "GTD", "expire_at": "2026-01-01T00:05:00Z"},
     DenialReason.INVALID_ALGO_PARAMETERS, "falls before the twap's end"),
    ({"algo": "twap", "slices": 3, "duration_s": 60}, {"time_in_force": "IOC"}, DenialReason.INVALID_ALGO_PARAMETERS,
     "time_in_force IOC"),
    ({"algo": "iceberg", "display_quantity": "0.1"}, {}, DenialReason.INVALID_ALGO_PARAMETERS, "needs a limit price"),
    ({"algo": "iceberg"}, {"limit_price": "3000"}, DenialReason.INVALID_ALGO_PARAMETERS, "needs display_quantity"),
    ({"algo": "iceberg", "display_quantity": "0.00015"}, {"limit_price": "3000"}, DenialReason.INVALID_ALGO_PARAMETERS,
     "not a multiple of the lot size"),
    ({"algo": "iceberg", "display_quantity": "0.001"}, {"limit_price": "3000"}, DenialReason.INVALID_ALGO_PARAMETERS,
     "below the smallest order"),
    ({"algo": "iceberg", "display_quantity": "0.1", "slices": 3}, {"limit_price": "3000"},
     DenialReason.ALGO_NOT_SUPPORTED, "slices apply to twap"),
])
def test_parameters_it_cannot_honour_are_refused_with_a_reason(execution, fields, reason, words):
    result = plan(signal(**{"quantity": "1", **fields, "execution": execution}))
    assert isinstance(result, Denial) and result.reason == reason and words in result.message, result


def test_iceberg_plan_keeps_its_display_quantity():
    result = plan(signal(limit_price="3000", execution={"algo": "iceberg", "display_quantity": "0.1"}))
    assert result.display_quantity == D("0.1") and result.slice_quantities == []


def test_a_slice_carries_what_came_back_and_never_more_than_is_left():
    planned = [D("0.1")] * 4
    step, minimum = D("0.0001"), D("0.002")
    assert twap_slice_quantity(0, planned, D("0.4"), step, minimum) == D("0.1")
    assert twap_slice_quantity(1, planned, D("0.35"), step, minimum) == D("0.15")  # 0.05 given back
    assert twap_slice_quantity(2, planned, D("0.1"), step, minimum) == D("0.05")  # amended down: in proportion
    assert twap_slice_quantity(3, planned, D("0.0731"), step, minimum) == D("0.0731")  # the last takes all
    assert twap_slice_quantity(2, planned, D("0.201"), step, minimum) == D("0.101")  # 0.001 could not stand alone
    assert twap_slice_quantity(1, planned, D("0.003"), step, minimum) == 0  # a third would be below the minimum
    assert twap_slice_quantity(2, planned, D("0.003"), step, minimum) == D("0.003")  # so it goes whole, later
    assert twap_slice_quantity(1, planned, D("0.0015"), step, minimum) == 0  # below the minimum: carried
    assert twap_slice_quantity(1, planned, D("0"), step, minimum) == 0


def parent_state(quantity="1") -> ParentState:
    snap = OrderSnapshot(order_id="order-p", signal_id="p", strategy_id="t", client_order_id="order-p",
                         symbol="ETH/USDT", side="buy", order_type="market", time_in_force="GTC",
                         quantity=D(quantity), exchange="simulation", created_at=NOW, updated_at=NOW)
    return ParentState(snapshot=snap)


def report(order_id, state, filled="0", quantity="0.5", transitions=3, price=None, fees="0") -> ChildReport:
    return ChildReport(order_id=order_id, exchange="simulation", quantity=D(quantity), state=state,
                       filled_quantity=D(filled), average_fill_price=D(price) if price else None, fees=D(fees),
                       transitions=transitions)


def test_books_never_overfill_and_take_back_what_a_child_did_not_fill():
    state = parent_state("1")
    state.children = [ChildOrder(order_id="order-p-c1", exchange="simulation", quantity=D("0.5")),
                      ChildOrder(order_id="order-p-c2", exchange="simulation", quantity=D("0.5"))]
    assert books.left_to_work(state) == 0  # both open: nothing more may go out
    assert books.apply_child_report(state, report("order-p-c1", S.CANCELLED, filled="0.2", price="3000", fees="0.3"))
    assert books.left_to_work(state) == D("0.3")  # the cancelled child's unfilled 0.3 comes back
    assert not books.apply_child_report(state, report("order-p-c1", S.CANCELLED, filled="0.2"))  # duplicate
    assert not books.apply_child_report(state, report("order-p-c1", S.ACCEPTED, filled="0.1", transitions=2))  # stale
    # A late fill after the cancel is counted, and given back no more.
    assert books.apply_child_report(state, report("order-p-c1", S.CANCELLED, filled="0.25", price="3000", fees="0.4"))
    assert books.left_to_work(state) == D("0.25")
    assert books.apply_child_report(state, report("order-p-c2", S.REJECTED, transitions=3))
    assert books.left_to_work(state) == D("0.75")
    assert not books.apply_child_report(state, report("order-p-c9", S.FILLED))  # not ours
    books.aggregate(state)
    snap = state.snapshot
    assert snap.filled_quantity == D("0.25") and snap.average_fill_price == D("3000") and snap.fees == D("0.4")
    assert [(c.order_id, c.state, c.filled_quantity) for c in snap.children] == [
        ("order-p-c1", S.CANCELLED, D("0.25")), ("order-p-c2", S.REJECTED, D("0"))]
    assert books.final_state(state)[0] == S.EXPIRED


def test_the_aggregate_state_of_a_parent():
    state = parent_state("1")
    assert books.working_state(state) == S.VALIDATED
    state.children = [ChildOrder(order_id="order-p-c1", exchange="simulation", quantity=D("1"), state=S.DENIED,
                                 reason="daily_order_limit: reached")]
    assert books.final_state(state) == (S.DENIED, "every child order was denied: daily_order_limit: reached")
    state.children[0].state = S.REJECTED
    assert books.final_state(state)[0] == S.REJECTED
    state.children[0] = ChildOrder(order_id="order-p-c1", exchange="simulation", quantity=D("1"),
                                   state=S.FILLED, filled_quantity=D("1"), average_fill_price=D("10"))
    books.aggregate(state)
    assert books.final_state(state) == (S.FILLED, None)
    assert books.working_state(state) == S.PARTIALLY_FILLED
    state.cancel_request = books.CancelRequest(reason="stop")
    assert books.working_state(state) == S.PENDING_CANCEL
    assert books.child_id("order-p", 3) == "order-p-c3"
