"""The router (oms/routing.py route) and the slicer (oms/slicing.py): pure, no Temporal."""
from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oms.models import Side
from oms.routing import BookLevel, RoutePlan, VenueBook, route
from oms.slicing import SliceError, child_caps, split_quantity
from oms.venue import MarketInfo


def market(step: str = "0.001", min_amount: str = "0.001", min_notional: str = "5", active: bool = True) -> MarketInfo:
    return MarketInfo(symbol="BTC/USDT", base="BTC", quote="USDT", amount_step=D(step), price_step=D("0.01"),
                      min_amount=D(min_amount), min_notional=D(min_notional), active=active)


def book(name: str, fee: str, asks: list[tuple[str, str]] = (), bids: list[tuple[str, str]] = (),
         m: MarketInfo | None = None, **extra) -> VenueBook:
    return VenueBook(exchange=name, market=m or market(), taker_fee=D(fee),
                     asks=[BookLevel(price=D(p), quantity=D(q)) for p, q in asks],
                     bids=[BookLevel(price=D(p), quantity=D(q)) for p, q in bids], **extra)


def total(plan: RoutePlan) -> D:
    return sum((leg.quantity for leg in plan.legs), D(0))


# --- single venue -----------------------------------------------------------------------------

def test_cheapest_all_in_venue_wins_even_with_a_worse_price_before_fees():
    cheap_price = book("a", "0.002", asks=[("100.00", "5")])   # all-in 100.20
    cheap_fee = book("b", "0.0005", asks=[("100.10", "5")])    # all-in 100.15005
    plan = route(Side.BUY, D("1"), [cheap_price, cheap_fee], collar_price=D("101"))
    assert [(leg.exchange, leg.quantity) for leg in plan.legs] == [("b", D("1"))]
    assert plan.best_single_venue == "b" and plan.all_in_price == D("100.15005")
    assert "b: best all-in" in plan.reason
    assert any(c.startswith("a: all-in 100.2") for c in plan.considered)


def test_sell_prefers_the_venue_that_keeps_the_most():
    a = book("a", "0.001", bids=[("100.00", "5")])  # keeps 99.9
    b = book("b", "0.0001", bids=[("99.95", "5")])  # keeps 99.940005
    plan = route(Side.SELL, D("2"), [a, b], collar_price=D("99"))
    assert [leg.exchange for leg in plan.legs] == ["b"]
    assert plan.legs[0].expected_all_in_price == D("99.940005")


def test_ineligible_venues_are_never_chosen_and_the_reason_is_recorded():
    best = book("a", "0", asks=[("90", "5")], eligible=False, ineligible_reason="breaker open")
    inactive = book("c", "0", asks=[("91", "5")], m=market(active=False))
    other = book("b", "0.001", asks=[("100", "5")])
    plan = route(Side.BUY, D("1"), [best, inactive, other], collar_price=None)
    assert [leg.exchange for leg in plan.legs] == ["b"]
    assert "a: breaker open" in plan.considered and "c: market not active" in plan.considered


def test_a_venue_whose_minimums_the_order_misses_is_not_eligible_alone():
    strict = book("a", "0", asks=[("100", "5")], m=market(min_amount="2"))
    plan = route(Side.BUY, D("1"), [strict, book("b", "0.01", asks=[("100", "5")])], collar_price=None)
    assert [leg.exchange for leg in plan.legs] == ["b"]
    assert any("below its minimum amount 2" in c for c in plan.considered)


def test_the_collar_limits_the_depth_a_venue_offers():
    a = book("a", "0", asks=[("100", "1"), ("105", "10")])
    plan = route(Side.BUY, D("2"), [a], collar_price=D("101"))
    assert plan.legs == [] and "cannot fill" in plan.reason
    assert "a: depth within the collar fills 1 of 2" in plan.considered
    plan = route(Side.BUY, D("2"), [a], collar_price=D("105"))
    assert plan.legs[0].expected_average_price == D("102.5")


def test_no_eligible_venue_gives_no_legs_and_says_so():
    plan = route(Side.BUY, D("1"), [book("a", "0", asks=[("1", "9")], eligible=False, ineligible_reason="paused")],
                 collar_price=None)
    assert plan.legs == [] and plan.reason == "no eligible venue"


# --- splits -----------------------------------------------------------------------------------

def test_split_when_no_single_venue_has_the_depth_within_the_collar():
    a = book("a", "0.001", asks=[("100", "2"), ("110", "50")])
    b = book("b", "0.001", asks=[("100.5", "1.5"), ("110", "50")])
    plan = route(Side.BUY, D("3.5"), [a, b], collar_price=D("101"))
    assert {(leg.exchange, leg.quantity) for leg in plan.legs} == {("a", D("2")), ("b", D("1.5"))}
    assert plan.best_single_venue is None and "no single venue" in plan.reason
    assert plan.is_split and total(plan) == D("3.5")


def test_split_taken_when_it_beats_the_best_single_venue():
    a = book("a", "0.001", asks=[("100", "1"), ("101", "10")])
    b = book("b", "0.001", asks=[("100", "1"), ("101", "10")])
    plan = route(Side.BUY, D("2"), [a, b], collar_price=None)
    assert sorted(leg.quantity for leg in plan.legs) == [D("1"), D("1")]
    assert plan.all_in_price == D("100.1") and plan.best_single_venue_all_in_price == D("100.6005")
    assert "beats the best single venue" in plan.reason


def test_split_not_taken_when_it_does_not_beat_the_best_single_venue():
    # The second venue's only level is worse than the first venue's whole walk: greedy gives it nothing.
    a = book("a", "0.001", asks=[("100", "10")])
    b = book("b", "0.001", asks=[("100", "10")])  # equal: a split would cost the same, so it is not taken
    plan = route(Side.BUY, D("4"), [a, b], collar_price=None)
    assert len(plan.legs) == 1 and plan.legs[0].exchange == "a"


def test_split_shares_are_rounded_to_each_venues_lot_and_sum_exactly():
    coarse = book("a", "0", asks=[("100", "0.35"), ("100.2", "5")], m=market(step="0.1", min_amount="0.1"))
    fine = book("b", "0", asks=[("100.1", "0.237"), ("100.3", "5")])
    plan = route(Side.BUY, D("0.6"), [coarse, fine], collar_price=None)
    assert total(plan) == D("0.6")
    by = {leg.exchange: leg.quantity for leg in plan.legs}
    assert by["a"] % D("0.1") == 0 and by["b"] % D("0.001") == 0
    assert by == {"a": D("0.3"), "b": D("0.3")}  # a's 0.35 rounds down to 0.3; b takes the rest, its next best


def test_a_leg_below_its_venues_minimum_is_merged_into_the_others():
    a = book("a", "0", asks=[("100", "10")])
    tiny = book("b", "0", asks=[("99", "0.01"), ("200", "1")], m=market(min_notional="5"))  # 0.01 * 99 < 5
    plan = route(Side.BUY, D("1"), [a, tiny], collar_price=D("101"))
    assert [(leg.exchange, leg.quantity) for leg in plan.legs] == [("a", D("1"))]
    assert any("share merged into the others" in c for c in plan.considered)


def test_child_caps_cut_each_leg_into_lot_multiples():
    a = book("a", "0", asks=[("100", "10")])
    plan = route(Side.BUY, D("2.5"), [a], collar_price=None, max_child_quantity={"BTC/USDT": D("1")})
    assert [leg.quantity for leg in plan.legs] == [D("0.834"), D("0.833"), D("0.833")]
    assert {leg.exchange for leg in plan.legs} == {"a"}
    plan = route(Side.BUY, D("2.5"), [a], collar_price=None, max_child_notional={"a": D("150")})
    assert total(plan) == D("2.5") and all(leg.quantity * 100 <= 150 for leg in plan.legs)
    with pytest.raises(SliceError, match="below the venue minimum"):
        route(Side.BUY, D("2.5"), [a], collar_price=None, max_child_notional=D("1"))


# --- property ---------------------------------------------------------------------------------

STEPS = [D("0.001"), D("0.01"), D("0.1")]


@st.composite
def venues(draw):
    count = draw(st.integers(1, 4))
    out = []
    for i in range(count):
        step = draw(st.sampled_from(STEPS))
        price = D(draw(st.integers(9_990, 10_010))) / 100
        levels = []
        for _ in range(draw(st.integers(0, 6))):
            levels.append((price, D(draw(st.integers(1, 150))) / 100))
            price += D(draw(st.integers(1, 50))) / 100
        fee = D(draw(st.integers(0, 30))) / 10_000
        eligible = draw(st.booleans()) or i == 0
        m = market(step=str(step), min_amount=str(step * draw(st.integers(1, 3))), min_notional=str(draw(st.integers(0, 20))))
        out.append(VenueBook(exchange=f"v{i}", market=m, taker_fee=fee, eligible=eligible,
                             ineligible_reason=None if eligible else "breaker open",
                             asks=[BookLevel(price=p, quantity=q) for p, q in levels],
                             bids=[BookLevel(price=p - 2, quantity=q) for p, q in levels]))
    return out


def independent_cost(side: Side, venue: VenueBook, quantity: D, collar: D | None, fees: bool = True) -> D | None:
    """Total all-in cost (`fees`: else the notional) of taking `quantity` from one venue within the
    collar (None: cannot)."""
    levels = venue.asks if side == Side.BUY else venue.bids
    left, cost = quantity, D(0)
    for level in levels:
        if collar is not None and (level.price > collar if side == Side.BUY else level.price < collar):
            break
        take = min(left, level.quantity)
        cost += take * level.price
        left -= take
    if left > 0:
        return None
    if not fees:
        return cost
    return cost * (1 + venue.taker_fee) if side == Side.BUY else cost * (1 - venue.taker_fee)


QUANTITIES = st.one_of(st.integers(1, 300).map(lambda n: n * D("0.01")), st.integers(1, 3000).map(lambda n: n * D("0.001")))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=venues(), side=st.sampled_from([Side.BUY, Side.SELL]), quantity=QUANTITIES,
       collar_offset=st.one_of(st.none(), st.integers(0, 300)))
def test_router_never_worse_than_a_single_venue_legs_exact_lots_eligible(books, side, quantity, collar_offset):
    collar = None if collar_offset is None else (D(99) + D(collar_offset) / 100 if side == Side.BUY
                                                 else D(101) - D(collar_offset) / 100 - 2)
    plan = route(side, quantity, books, collar_price=collar)
    by_name = {b.exchange: b for b in books}
    singles = {}
    for b in books:
        m = b.market
        cost = independent_cost(side, b, quantity, collar)
        if (b.eligible and cost is not None and quantity % m.amount_step == 0 and quantity >= m.min_amount
                and independent_cost(side, b, quantity, collar, fees=False) >= m.min_notional):
            singles[b.exchange] = cost
    if not plan.legs:
        assert not singles  # a fillable single venue is always used
        return
    assert total(plan) == quantity
    per_venue: dict[str, D] = {}
    for leg in plan.legs:
        venue = by_name[leg.exchange]
        assert venue.eligible
        assert leg.quantity > 0 and leg.quantity % venue.market.amount_step == 0
        assert leg.quantity >= venue.market.min_amount
        assert leg.quantity * leg.expected_average_price >= venue.market.min_notional
        per_venue[leg.exchange] = per_venue.get(leg.exchange, D(0)) + leg.quantity
    plan_cost = D(0)
    for name, q in per_venue.items():
        cost = independent_cost(side, by_name[name], q, collar)
        assert cost is not None  # every leg fits its venue's depth within the collar
        plan_cost += cost
    for cost in singles.values():
        assert plan_cost <= cost if side == Side.BUY else plan_cost >= cost
    if plan.is_split and singles:
        best = min(singles.values()) if side == Side.BUY else max(singles.values())
        assert plan_cost != best  # a split is taken only when strictly better


# --- slicing ----------------------------------------------------------------------------------

def test_split_into_parts_spreads_the_remainder_lot_by_lot():
    assert split_quantity(D("1.000"), market(), parts=3) == [D("0.334"), D("0.333"), D("0.333")]
    assert split_quantity(D("0.002"), market(min_amount="0.001", min_notional="0"), parts=5) == [D("0.001")] * 2


def test_parts_below_the_minimum_notional_merge_into_fewer_children():
    parts = split_quantity(D("0.1"), market(min_notional="5"), parts=10, price=D("100"))
    assert parts == [D("0.05"), D("0.05")]  # 0.01 * 100 = 1 < 5: at most two children of 0.05
    assert split_quantity(D("0.01"), market(min_notional="5"), parts=3, price=D("100")) == [D("0.01")]


def test_caps_give_the_fewest_children_within_them():
    assert split_quantity(D("2.5"), market(), max_quantity=D("1")) == [D("0.834"), D("0.833"), D("0.833")]
    assert split_quantity(D("2"), market(), max_quantity=D("1")) == [D("1"), D("1")]
    assert split_quantity(D("1"), market(), max_notional=D("30"), price=D("100")) == [D("0.25")] * 4


def test_impossible_splits_are_refused_with_a_reason():
    with pytest.raises(SliceError, match="not a multiple of the lot size"):
        split_quantity(D("1.0005"), market(), parts=2)
    with pytest.raises(SliceError, match="below the venue minimum"):
        split_quantity(D("1"), market(min_amount="0.5"), max_quantity=D("0.4"))
    with pytest.raises(SliceError, match="needs a price"):
        split_quantity(D("1"), market(), max_notional=D("10"))
    with pytest.raises(SliceError, match="cannot be cut"):
        split_quantity(D("1.1"), market(min_amount="0.6"), max_quantity=D("1"))
    assert split_quantity(D("1.5"), market(min_amount="0.6"), max_quantity=D("1")) == [D("0.75")] * 2


def test_child_caps_take_the_tighter_of_symbol_and_venue():
    caps = {"BTC/USDT": D("2"), "binance": D("1"), "ETH/USDT": D("0.1")}
    assert child_caps(caps, "BTC/USDT", "binance") == D("1")
    assert child_caps(caps, "BTC/USDT", "bybit") == D("2")
    assert child_caps(caps, "SOL/USDT", "bybit") is None


@settings(max_examples=300, deadline=None)
@given(lots=st.integers(1, 100_000), step=st.sampled_from(STEPS), parts=st.one_of(st.none(), st.integers(1, 50)),
       cap_lots=st.one_of(st.none(), st.integers(1, 5_000)), min_lots=st.integers(1, 5))
def test_slices_are_lot_multiples_within_bounds_summing_exactly(lots, step, parts, cap_lots, min_lots):
    m = market(step=str(step), min_amount=str(step * min_lots), min_notional="0")
    total_q = step * lots
    cap = None if cap_lots is None else step * cap_lots
    try:
        pieces = split_quantity(total_q, m, parts=parts, max_quantity=cap)
    except SliceError:
        assert cap is not None  # only a cap can make a split impossible
        return
    assert sum(pieces, D(0)) == total_q
    assert all(p % step == 0 and p > 0 for p in pieces)
    if lots >= min_lots:
        assert all(p >= m.min_amount for p in pieces)
    if cap is not None:
        assert all(p <= cap for p in pieces)
    if parts is not None:
        assert len(pieces) <= max(parts, 1 if cap is None else len(pieces))
    assert max(pieces) - min(pieces) <= step
