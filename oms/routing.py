"""Smart order routing: where an order goes, decided from the venues' books and fees (pure).

The router walks each eligible venue's book for the order's quantity, adds that venue's taker fee
for the account, and picks the cheapest all-in venue, or splits across venues where the split is
cheaper than the best single venue or no single venue's depth within the price collar can fill it.
A split that does not beat the best single venue is not taken (DESIGN.md section 5).

This module holds the data the router takes and gives (shared by the routing activity, the order
and parent workflows and the benchmark); the decision itself is a pure function beside them.
"""
from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import NamedTuple

from pydantic import BaseModel, Field

from oms.models import Side
from oms.slicing import child_caps, split_quantity
from oms.venue import MarketInfo


class BookLevel(BaseModel):
    price: Decimal
    quantity: Decimal


class VenueBook(BaseModel):
    """One venue's view of one symbol as the router needs it: constraints, fee and book."""

    exchange: str
    market: MarketInfo
    taker_fee: Decimal  # the rate this account pays on this venue (fraction, 0.001 = 10 bps)
    bids: list[BookLevel] = Field(default_factory=list)  # best first
    asks: list[BookLevel] = Field(default_factory=list)  # best first
    eligible: bool = True
    ineligible_reason: str | None = None  # e.g. "breaker open", "paused", "market not listed"
    fetched_at_ms: int = 0


class RouteLeg(BaseModel):
    """Quantity for one venue, with what the book said it would cost."""

    exchange: str
    quantity: Decimal
    expected_average_price: Decimal  # book walk, before fees
    expected_all_in_price: Decimal  # fees included (per unit of base)


class RoutePlan(BaseModel):
    """The router's decision and the inputs behind it (recorded on the order: why this venue)."""

    symbol: str
    side: Side
    quantity: Decimal
    legs: list[RouteLeg]  # one leg: a single venue; several: a split (the order becomes a parent)
    best_single_venue: str | None = None
    best_single_venue_all_in_price: Decimal | None = None  # None where no single venue can fill it
    all_in_price: Decimal | None = None  # of the chosen plan, quantity-weighted
    reason: str  # one line an operator reads: why this venue or this split
    considered: list[str] = Field(default_factory=list)  # "binance: all-in 50012.3", "bybit: breaker open"

    @property
    def is_split(self) -> bool:
        return len(self.legs) > 1


# --- the decision ---------------------------------------------------------------------------------

class _Level(NamedTuple):
    exchange: str
    price: Decimal
    quantity: Decimal
    all_in: Decimal  # price with the venue's taker fee: what a buyer pays / a seller keeps per unit


def _better(side: Side, a: Decimal, b: Decimal) -> bool:
    """Whether all-in price `a` is strictly better than `b` for this side (a buyer pays less, a seller keeps more)."""
    return a < b if side == Side.BUY else a > b


def _all_in(side: Side, price: Decimal, fee: Decimal) -> Decimal:
    return price * (1 + fee) if side == Side.BUY else price * (1 - fee)


def _levels(side: Side, book: VenueBook, collar: Decimal | None) -> list[_Level]:
    """The levels an order of `side` takes from on this venue, within the collar, best first."""
    out = []
    for level in (book.asks if side == Side.BUY else book.bids):
        if level.quantity <= 0 or level.price <= 0:
            continue
        if collar is not None and (level.price > collar if side == Side.BUY else level.price < collar):
            break
        out.append(_Level(book.exchange, level.price, level.quantity, _all_in(side, level.price, book.taker_fee)))
    return out


class _Walk(NamedTuple):
    filled: Decimal
    average: Decimal | None
    all_in: Decimal | None
    worst: Decimal | None  # the last level's price touched


def walk(side: Side, book: VenueBook, quantity: Decimal, collar: Decimal | None) -> _Walk:
    """Take `quantity` from the venue's book within the collar: what fills, at what prices."""
    left, cost, worst = quantity, Decimal(0), None
    for level in _levels(side, book, collar):
        if left <= 0:
            break
        take = min(left, level.quantity)
        cost += take * level.price
        left -= take
        worst = level.price
    filled = quantity - left
    if filled <= 0:
        return _Walk(Decimal(0), None, None, None)
    average = cost / filled
    return _Walk(filled, average, _all_in(side, average, book.taker_fee), worst)


def _eligibility(book: VenueBook) -> str | None:
    if not book.eligible:
        return book.ineligible_reason or "not eligible"
    if not book.market.active:
        return "market not active"
    if book.market.amount_step <= 0:
        return "no lot size"
    return None


def _minimum_problem(book: VenueBook, quantity: Decimal, price: Decimal | None) -> str | None:
    m = book.market
    if quantity % m.amount_step != 0:
        return f"{quantity} is not a multiple of its lot size {m.amount_step}"
    if quantity < m.min_amount:
        return f"{quantity} is below its minimum amount {m.min_amount}"
    if price is not None and quantity * price < m.min_notional:
        return f"{quantity * price:.2f} is below its minimum notional {m.min_notional}"
    return None


def _fmt(value: Decimal | None) -> str:
    return "-" if value is None else format(value.quantize(Decimal("0.00000001")).normalize(), "f")


def _allocate(side: Side, quantity: Decimal, books: dict[str, VenueBook], collar: Decimal | None) -> dict[str, Decimal] | None:
    """Greedy by marginal all-in price over every venue's levels (optimal for books walked in price
    order with proportional fees), then each venue's share rounded down to its lot and the
    remainder placed, lot by lot, on the venues whose next unit is cheapest. None: no exact split."""
    levels = sorted((lv for b in books.values() for lv in _levels(side, b, collar)),
                    key=lambda lv: lv.all_in if side == Side.BUY else -lv.all_in)
    raw: dict[str, Decimal] = {name: Decimal(0) for name in books}
    left = quantity
    for level in levels:
        if left <= 0:
            break
        take = min(left, level.quantity)
        raw[level.exchange] += take
        left -= take
    if left > 0:
        return None  # the venues' depth within the collar together cannot fill it
    depth = {name: sum((lv.quantity for lv in _levels(side, b, collar)), Decimal(0)) for name, b in books.items()}
    shares = {name: (q / books[name].market.amount_step).to_integral_value(ROUND_FLOOR) * books[name].market.amount_step
              for name, q in raw.items()}
    remainder = quantity - sum(shares.values())

    def next_lot(name: str) -> tuple[bool, Decimal, str]:
        """Sort key: venues with room first, then by the all-in price of their next lot."""
        step = books[name].market.amount_step
        after = walk(side, books[name], shares[name] + step, collar)
        if after.filled < shares[name] + step or after.worst is None:
            return True, Decimal(0), name
        price = _all_in(side, after.worst, books[name].taker_fee)
        return False, price if side == Side.BUY else -price, name

    for name in sorted(books, key=next_lot):
        if remainder <= 0:
            break
        step = books[name].market.amount_step
        room = ((depth[name] - shares[name]) / step).to_integral_value(ROUND_FLOOR) * step
        add = min((remainder / step).to_integral_value(ROUND_FLOOR) * step, room)
        if add > 0:
            shares[name] += add
            remainder -= add
    if remainder != 0:
        return None
    return {name: q for name, q in shares.items() if q > 0}


def _leg(side: Side, book: VenueBook, quantity: Decimal, collar: Decimal | None) -> tuple[RouteLeg, Decimal, Decimal | None]:
    """A leg with its expected prices, its total all-in cost, and the worst price it touches."""
    w = walk(side, book, quantity, collar)
    assert w.average is not None and w.all_in is not None
    return (RouteLeg(exchange=book.exchange, quantity=quantity, expected_average_price=w.average,
                     expected_all_in_price=w.all_in), w.all_in * quantity, w.worst)


def _split(side: Side, quantity: Decimal, books: dict[str, VenueBook], collar: Decimal | None,
           dropped: list[str]) -> tuple[list[RouteLeg], Decimal, dict[str, Decimal | None]] | None:
    """The cheapest split over the venues, each leg above its venue's minimums: a venue whose leg
    would fall below them is dropped (noted in `dropped`) and its share merged into the others."""
    venues = dict(books)
    while len(venues) > 1:
        shares = _allocate(side, quantity, venues, collar)
        if shares is None:
            return None
        problems = {}
        for name, q in shares.items():
            w = walk(side, venues[name], q, collar)
            problem = _minimum_problem(venues[name], q, w.average)
            if problem:
                problems[name] = problem
        if not problems:
            legs, total, worst = [], Decimal(0), {}
            for name in sorted(shares, key=lambda n: (-shares[n], n)):
                leg, cost, worst[name] = _leg(side, venues[name], shares[name], collar)
                legs.append(leg)
                total += cost
            return legs, total, worst
        smallest = min(problems, key=lambda n: (shares[n], n))
        dropped.append(f"{smallest}: share merged into the others ({problems[smallest]})")
        del venues[smallest]
    return None


def _children(side: Side, legs: list[RouteLeg], books: dict[str, VenueBook], worst: dict[str, Decimal | None],
              max_child_quantity: dict[str, Decimal] | Decimal | None,
              max_child_notional: dict[str, Decimal] | Decimal | None, symbol: str) -> list[RouteLeg]:
    """Each venue's leg cut into children within the configured caps (valued at the worst price
    the leg touches, so no child exceeds the notional cap at the prices the book showed)."""
    out = []
    for leg in legs:
        qcap = _cap(max_child_quantity, symbol, leg.exchange)
        ncap = _cap(max_child_notional, symbol, leg.exchange)
        if qcap is None and ncap is None:
            out.append(leg)
            continue
        price = worst.get(leg.exchange) or leg.expected_average_price
        for q in split_quantity(leg.quantity, books[leg.exchange].market, max_quantity=qcap,
                                max_notional=ncap, price=price):
            out.append(leg.model_copy(update={"quantity": q}))
    return out


def _cap(caps: dict[str, Decimal] | Decimal | None, symbol: str, exchange: str) -> Decimal | None:
    if caps is None or isinstance(caps, Decimal):
        return caps
    return child_caps(caps, symbol, exchange)


def route(side: Side, quantity: Decimal, books: list[VenueBook], *, collar_price: Decimal | None,
          max_child_quantity: dict[str, Decimal] | Decimal | None = None,
          max_child_notional: dict[str, Decimal] | Decimal | None = None, symbol: str | None = None) -> RoutePlan:
    """Where `quantity` goes (see the module header). `collar_price` is the worst price any unit
    may take (a market order's collar, a limit order's limit); None walks the whole book.
    `max_child_*` (one cap, or a map by symbol and by venue) cut each venue's leg into children;
    a cap the venue's minimum makes impossible raises `SliceError` (the order is refused with it)."""
    symbol = symbol or (books[0].market.symbol if books else "")
    considered: list[str] = []
    eligible: dict[str, VenueBook] = {}
    for book in books:
        why = _eligibility(book)
        if why:
            considered.append(f"{book.exchange}: {why}")
        else:
            eligible[book.exchange] = book
    singles: dict[str, tuple[RouteLeg, Decimal, Decimal | None]] = {}
    for name, book in sorted(eligible.items()):
        w = walk(side, book, quantity, collar_price)
        if w.filled < quantity:
            considered.append(f"{name}: depth within the collar fills {_fmt(w.filled)} of {_fmt(quantity)}")
            continue
        problem = _minimum_problem(book, quantity, w.average)
        if problem:
            considered.append(f"{name}: {problem}")
            continue
        singles[name] = _leg(side, book, quantity, collar_price)
        considered.append(f"{name}: all-in {_fmt(singles[name][0].expected_all_in_price)} "
                          f"(average {_fmt(w.average)}, taker fee {_fmt(book.taker_fee)})")
    best = None
    for name in sorted(singles):
        if best is None or _better(side, singles[name][0].expected_all_in_price, singles[best][0].expected_all_in_price):
            best = name
    dropped: list[str] = []
    split = _split(side, quantity, eligible, collar_price, dropped) if len(eligible) > 1 else None
    considered.extend(dropped)
    base = RoutePlan(symbol=symbol, side=side, quantity=quantity, legs=[], reason="", considered=considered,
                     best_single_venue=best,
                     best_single_venue_all_in_price=singles[best][0].expected_all_in_price if best else None)
    if split is not None:
        legs, cost, worst = split
        price = cost / quantity
        if len(legs) > 1 and (best is None or _better(side, price, singles[best][0].expected_all_in_price)):
            venues = ", ".join(f"{leg.quantity} on {leg.exchange}" for leg in legs)
            why = (f"split {venues}: all-in {_fmt(price)} beats the best single venue {best} at "
                   f"{_fmt(singles[best][0].expected_all_in_price)}" if best else
                   f"split {venues}: no single venue's depth within the collar fills {_fmt(quantity)}; "
                   f"all-in {_fmt(price)}")
            return base.model_copy(update={
                "legs": _children(side, legs, eligible, worst, max_child_quantity, max_child_notional, symbol),
                "all_in_price": price, "reason": why})
        if best is not None and len(legs) > 1:
            considered.append(f"split all-in {_fmt(price)} does not beat {best}: not taken")
    if best is None:
        why = ("no eligible venue" if not eligible else
               "the eligible venues, alone or split, cannot fill the quantity within the collar")
        return base.model_copy(update={"reason": why})
    leg, _, worst_price = singles[best]
    runner_up = [n for n in singles if n != best]
    why = (f"{best}: best all-in {_fmt(leg.expected_all_in_price)}"
           + (f" of {len(singles)} venues able to fill it" if runner_up else ", the only venue able to fill it"))
    return base.model_copy(update={
        "legs": _children(side, [leg], eligible, {best: worst_price}, max_child_quantity, max_child_notional, symbol),
        "all_in_price": leg.expected_all_in_price, "reason": why})
