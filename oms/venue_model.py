"""A simulated venue, as pure functions: price path, order book, matching, fees.

Nothing here does I/O or reads the clock: time is passed in, so every process computes the same
prices and the same fills for the same inputs. The simulation adapter (`activities/venues/simulated.py`)
keeps `SimOrder`s in Redis and calls these functions; the exchange emulator reuses them.

- Price path: a deterministic sum of sines per symbol (amplitude `volatility_bps`), so a resting
  order's fills can be recomputed after any crash.
- Book: `depth_levels` levels each side, one basis point apart, each holding `level_notional` of
  the quote currency (times `depth_scale`); a market order walks it, so slippage grows with size against depth, on top
  of the configured base `slippage`.
- Limit orders that cross are taker fills; the rest rests and fills as maker when the path crosses
  its price, at most one level's size per second (partial fills over time).
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from pydantic import BaseModel, Field

from config.settings import SimulationSettings
from oms.markets import base_price, level_notional, simulated_market
from oms.models import OrderType, Side, TimeInForce
from oms.venue import OPEN_STATUSES, MarketInfo, VenueFill, VenueOrderReport, VenueOrderRequest, VenueOrderStatus

HALF_SPREAD = Decimal("0.00005")  # 0.5 bp each side of mid
LEVEL_GAP = Decimal("0.0001")  # 1 bp between book levels
MAX_CATCH_UP = timedelta(days=30)  # a resting order is evaluated at most this far back


class SimOrder(BaseModel):
    exchange: str
    account: str
    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    limit_price: Decimal | None = None
    status: VenueOrderStatus = VenueOrderStatus.NEW
    fills: list[VenueFill] = Field(default_factory=list)
    created_at: datetime
    evaluated_until: datetime
    reason: str | None = None

    @property
    def filled_quantity(self) -> Decimal:
        return sum((f.quantity for f in self.fills), Decimal(0))

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


def _phase(symbol: str) -> float:
    return int(hashlib.sha256(symbol.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF * 2 * math.pi


def mid_price(symbol: str, at: datetime, sim: SimulationSettings) -> Decimal:
    t = at.timestamp()
    phase = _phase(symbol)
    wave = (
        0.6 * math.sin(2 * math.pi * t / 3600 + phase)
        + 0.3 * math.sin(2 * math.pi * t / 600 + 2 * phase)
        + 0.1 * math.sin(2 * math.pi * t / 60 + 3 * phase)
    )
    factor = Decimal(repr(1 + sim.volatility_bps / 10_000 * wave))
    market = simulated_market(symbol)
    step = market.price_step if market else Decimal("0.00000001")
    return _round(base_price(symbol) * factor, step)


def _round(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def top_of_book(symbol: str, at: datetime, sim: SimulationSettings) -> tuple[Decimal, Decimal]:
    mid = mid_price(symbol, at, sim)
    return mid * (1 - HALF_SPREAD), mid * (1 + HALF_SPREAD)


def _level_notional(symbol: str, sim: SimulationSettings) -> Decimal:
    notional = level_notional(symbol)
    return notional if sim.depth_scale == 1 else notional * Decimal(repr(sim.depth_scale))


def book_side(symbol: str, side: Side, at: datetime, sim: SimulationSettings) -> list[tuple[Decimal, Decimal]]:
    """The levels a `side` order takes from: [(price, size)], best first."""
    bid, ask = top_of_book(symbol, at, sim)
    levels = []
    for i in range(sim.depth_levels):
        price = ask * (1 + LEVEL_GAP * i) if side == Side.BUY else bid * (1 - LEVEL_GAP * i)
        levels.append((price, _level_notional(symbol, sim) / price))
    return levels


def estimate_slippage_bps(symbol: str, side: Side, quantity: Decimal, at: datetime,
                          sim: SimulationSettings) -> Decimal:
    """Expected slippage of a market order of `quantity` against mid, in basis points."""
    fills = _walk(symbol, side, quantity, None, at, sim)
    filled = sum((q for _, q in fills), Decimal(0))
    if not filled:
        return Decimal(0)
    average = sum((p * q for p, q in fills), Decimal(0)) / filled
    mid = mid_price(symbol, at, sim)
    return abs(average - mid) / mid * 10_000


def _walk(symbol: str, side: Side, quantity: Decimal, limit: Decimal | None, at: datetime,
          sim: SimulationSettings) -> list[tuple[Decimal, Decimal]]:
    """Take liquidity level by level up to `limit`; returns [(price, quantity)] with base slippage."""
    market = simulated_market(symbol)
    step = market.amount_step if market else Decimal("0.00000001")
    slip = Decimal(repr(sim.slippage))
    out: list[tuple[Decimal, Decimal]] = []
    left = quantity
    for price, size in book_side(symbol, side, at, sim):
        if left <= 0:
            break
        if limit is not None and ((side == Side.BUY and price > limit) or (side == Side.SELL and price < limit)):
            break
        take = _round(min(left, size), step)
        if take <= 0:
            break
        fill_price = price * (1 + slip) if side == Side.BUY else price * (1 - slip)
        if limit is not None:
            fill_price = min(fill_price, limit) if side == Side.BUY else max(fill_price, limit)
        out.append((fill_price, take))
        left -= take
    return out


def _fill(order: SimOrder, price: Decimal, quantity: Decimal, at: datetime, maker: bool,
          sim: SimulationSettings, market: MarketInfo) -> None:
    rate = Decimal(repr(sim.maker_fee if maker else sim.taker_fee))
    price = _round(price, market.price_step)
    order.fills.append(
        VenueFill(
            trade_id=f"{order.venue_order_id}-{len(order.fills) + 1}",
            quantity=quantity, price=price, fee=(price * quantity * rate).quantize(Decimal("0.00000001")),
            fee_currency=market.quote, liquidity="maker" if maker else "taker", at=at,
        )
    )


def _settle_status(order: SimOrder) -> None:
    if order.remaining <= 0:
        order.status = VenueOrderStatus.FILLED
    elif order.fills:
        order.status = VenueOrderStatus.PARTIALLY_FILLED


def submit(request: VenueOrderRequest, venue_order_id: str, now: datetime, sim: SimulationSettings) -> SimOrder:
    """A new order: crossing liquidity is taken at once; IOC/FOK/market remainders expire."""
    market = simulated_market(request.symbol)
    order = SimOrder(
        exchange=request.exchange, account=request.account, client_order_id=request.client_order_id,
        venue_order_id=venue_order_id, symbol=request.symbol, side=request.side,
        order_type=request.order_type, time_in_force=request.time_in_force,
        quantity=request.quantity, limit_price=request.limit_price, created_at=now, evaluated_until=now,
    )
    if market is None:
        order.status, order.reason = VenueOrderStatus.REJECTED, f"unknown symbol {request.symbol}"
        return order
    limit = request.limit_price if request.order_type == OrderType.LIMIT else None
    takes = _walk(request.symbol, request.side, request.quantity, limit, now, sim)
    available = sum((q for _, q in takes), Decimal(0))
    if request.time_in_force == TimeInForce.FOK and available < request.quantity:
        order.status, order.reason = VenueOrderStatus.EXPIRED, "FOK: not enough liquidity to fill at once"
        return order
    for price, quantity in takes:
        _fill(order, price, quantity, now, False, sim, market)
    _settle_status(order)
    immediate = request.order_type == OrderType.MARKET or request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
    if order.is_open and immediate:
        order.status = VenueOrderStatus.EXPIRED
        order.reason = "remainder beyond available depth expired" if order.fills else "no liquidity"
    return order


def advance(order: SimOrder, now: datetime, sim: SimulationSettings) -> SimOrder:
    """Fill a resting limit order wherever the price path crossed it, second by second, up to `now`."""
    if not order.is_open or order.limit_price is None or now <= order.evaluated_until:
        return order
    market = simulated_market(order.symbol)
    assert market is not None
    start = max(order.evaluated_until, now - MAX_CATCH_UP)
    seconds = int((now - start).total_seconds())
    per_second = _level_notional(order.symbol, sim) / order.limit_price
    for i in range(1, seconds + 1):
        at = start + timedelta(seconds=i)
        bid, ask = top_of_book(order.symbol, at, sim)
        crossed = ask <= order.limit_price if order.side == Side.BUY else bid >= order.limit_price
        if crossed:
            quantity = _round(min(order.remaining, per_second), market.amount_step)
            if quantity > 0:
                _fill(order, order.limit_price, quantity, at, True, sim, market)
                _settle_status(order)
                if not order.is_open:
                    break
    order.evaluated_until = start + timedelta(seconds=seconds)
    return order


def trade_through(order: SimOrder, now: datetime, sim: SimulationSettings) -> SimOrder:
    """The market trades through a resting limit order now: what is left fills at its limit price
    as maker. A scripted crossing (the emulator's admin API), so a test can fill an order at the
    venue at a moment it chooses instead of waiting for the price path to get there."""
    advance(order, now, sim)
    if not order.is_open or order.limit_price is None:
        return order
    market = simulated_market(order.symbol)
    assert market is not None
    _fill(order, order.limit_price, order.remaining, now, True, sim, market)
    _settle_status(order)
    return order


def cancel(order: SimOrder, now: datetime, sim: SimulationSettings) -> SimOrder:
    """Cancel what is left; a finished order is returned as it is (cancel after fill is not an error)."""
    advance(order, now, sim)
    if order.is_open:
        order.status = VenueOrderStatus.CANCELLED
    return order


def amend(order: SimOrder, quantity: Decimal | None, limit_price: Decimal | None, now: datetime,
          sim: SimulationSettings) -> SimOrder:
    """Native amend of a resting order; raises ValueError with the venue's reason when refused."""
    advance(order, now, sim)
    if not order.is_open:
        raise ValueError(f"order is {order.status.value}")
    if quantity is not None:
        if quantity <= order.filled_quantity:
            raise ValueError("new quantity must exceed the filled quantity")
        order.quantity = quantity
    if limit_price is not None:
        if order.order_type != OrderType.LIMIT:
            raise ValueError("only a limit order has a price to amend")
        order.limit_price = limit_price
    return order


def expire(order: SimOrder) -> SimOrder:
    if order.is_open:
        order.status = VenueOrderStatus.EXPIRED
    return order


def to_report(order: SimOrder) -> VenueOrderReport:
    return VenueOrderReport(
        exchange=order.exchange, client_order_id=order.client_order_id,
        venue_order_id=order.venue_order_id, symbol=order.symbol, status=order.status,
        quantity=order.quantity, limit_price=order.limit_price, filled_quantity=order.filled_quantity,
        fills=list(order.fills), reason=order.reason, at=order.evaluated_until,
    )
