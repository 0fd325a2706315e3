"""The emulated venue's state: one account's balances, its orders and its trades.

Matching and prices come from `oms.venue_model` (the simulation's pure functions), so a price seen
here is the price our workers compute for the same instant. Resting orders fill lazily: an order is
advanced to "now" whenever it is read, listed or touched, which yields the same fills as a matching
engine ticking every second would.

Venue rules that differ between Binance and Bybit (which client ids count as duplicates, how a
post-only order that would take is refused) are parameters; wire formats and error codes live in
the venue modules, which translate a `BookError`'s `Rejection`.

Fees are charged in the asset received, as both venues do without fee discounts: a buy pays its fee
in the base asset, a sell in the quote asset. The rate is the simulation's maker or taker fee.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from enum import StrEnum

from config.settings import SimulationSettings
from oms import venue_model
from oms.markets import SIMULATED_SYMBOLS, level_notional, simulated_market
from oms.models import OrderType, Side, TimeInForce
from oms.venue import MarketInfo, VenueFill, VenueOrderRequest, VenueOrderStatus
from oms.venue_model import SimOrder

FEE_QUANTUM = Decimal("0.00000001")
MAX_QTY_STEPS = Decimal(10) ** 7  # largest order, in lot steps (BTC: 100, DOGE: 10,000,000)

# What a fresh account holds (and holds again after a reset).
DEFAULT_BALANCES: dict[str, Decimal] = {
    "USDT": Decimal(1_000_000), "BTC": Decimal(10), "ETH": Decimal(100), "SOL": Decimal(1_000),
    "BNB": Decimal(1_000), "XRP": Decimal(1_000_000), "DOGE": Decimal(1_000_000),
    "ADA": Decimal(1_000_000),
}


class Rejection(StrEnum):
    UNKNOWN_SYMBOL = "unknown_symbol"
    PRICE_FILTER = "price_filter"  # price not a multiple of the tick size
    LOT_SIZE = "lot_size"  # quantity not a multiple of the lot step
    MIN_QTY = "min_qty"
    MAX_QTY = "max_qty"
    MIN_NOTIONAL = "min_notional"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    DUPLICATE_CLIENT_ID = "duplicate_client_id"
    WOULD_TAKE = "would_take"  # post-only order that would cross
    UNKNOWN_ORDER = "unknown_order"
    ORDER_CLOSED = "order_closed"  # cancel or amend of an order that is no longer open
    INVALID_AMEND = "invalid_amend"


class BookError(Exception):
    def __init__(self, rejection: Rejection, detail: str = "") -> None:
        super().__init__(f"{rejection.value}: {detail}" if detail else rejection.value)
        self.rejection = rejection
        self.detail = detail


class DuplicateRule(StrEnum):
    OPEN = "open"  # Binance: a client id may not repeat among open orders; reuse after close is fine
    EVER = "ever"  # Bybit: a client id may never repeat


@dataclass(frozen=True)
class Placement:
    """A new order as the venue module parsed it (symbol in ccxt form, `BTC/USDT`)."""

    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce = TimeInForce.GTC
    quantity: Decimal | None = None  # base units
    quote_quantity: Decimal | None = None  # market orders sized in the quote asset instead
    price: Decimal | None = None
    client_order_id: str = ""
    post_only: bool = False


@dataclass
class Trade:
    id: int
    order: EmuOrder
    fill: VenueFill
    fee: Decimal  # in fee_asset
    fee_asset: str

    @property
    def maker(self) -> bool:
        return self.fill.liquidity == "maker"

    @property
    def quote_quantity(self) -> Decimal:
        return self.fill.price * self.fill.quantity

    @property
    def time_ms(self) -> int:
        return to_ms(self.fill.at)


@dataclass
class EmuOrder:
    id: int
    sim: SimOrder
    placement: Placement
    market: MarketInfo
    created_ms: int
    updated_ms: int
    trades: list[Trade] = field(default_factory=list)
    # Binance: expired by self-trade prevention (EXPIRE_TAKER) rather than for want of liquidity.
    expired_in_match: bool = False

    @property
    def status(self) -> VenueOrderStatus:
        return self.sim.status

    @property
    def is_open(self) -> bool:
        return self.sim.is_open

    @property
    def quantity(self) -> Decimal:
        return self.sim.quantity

    @property
    def price(self) -> Decimal | None:
        return self.sim.limit_price

    @property
    def filled(self) -> Decimal:
        return self.sim.filled_quantity

    @property
    def filled_quote(self) -> Decimal:
        return sum((t.quote_quantity for t in self.trades), Decimal(0))

    @property
    def average_price(self) -> Decimal | None:
        return self.filled_quote / self.filled if self.filled else None

    @property
    def fees(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for t in self.trades:
            out[t.fee_asset] = out.get(t.fee_asset, Decimal(0)) + t.fee
        return out


def to_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def utc_now() -> datetime:
    return datetime.now(UTC)


def venue_symbol(symbol: str) -> str:
    """`BTC/USDT` -> `BTCUSDT`, the id both venues use."""
    return symbol.replace("/", "")


_BY_VENUE_SYMBOL = {venue_symbol(s): s for s in SIMULATED_SYMBOLS}


def unified_symbol(venue_id: str) -> str | None:
    return _BY_VENUE_SYMBOL.get(venue_id)


def max_quantity(market: MarketInfo) -> Decimal:
    return market.amount_step * MAX_QTY_STEPS


def _steps(value: Decimal, step: Decimal) -> bool:
    return value % step == 0


def _refused_post_only(placement: Placement, quantity: Decimal, order_id: int, now: datetime) -> SimOrder:
    """A post-only order that would take: accepted and cancelled at once (Bybit's PostOnly)."""
    return SimOrder(
        exchange="emulator", account="default", client_order_id=placement.client_order_id,
        venue_order_id=str(order_id), symbol=placement.symbol, side=placement.side,
        order_type=placement.order_type, time_in_force=placement.time_in_force, quantity=quantity,
        limit_price=placement.price, created_at=now, evaluated_until=now,
        status=VenueOrderStatus.CANCELLED, reason="post-only order would take liquidity",
    )


class Book:
    def __init__(self, sim: SimulationSettings, duplicates: DuplicateRule,
                 balances: dict[str, Decimal] | None = None) -> None:
        self.sim = self._configured_sim = sim
        self.duplicates = duplicates
        self._initial = dict(balances or DEFAULT_BALANCES)
        # Ids keep growing across resets (and start from the clock), so a stale id never matches.
        self._next_order_id = int(time.time()) * 1000
        self._next_trade_id = int(time.time()) * 1000
        self.reset()

    def configure(self, *, depth_levels: int | None = None, self_trade_expiry: bool | None = None,
                  maker_fee: float | None = None, taker_fee: float | None = None) -> None:
        """Shape the venue for a scenario: a book `depth_levels` deep (one level makes a large market
        order outrun the depth: its remainder ends after partial fills); `self_trade_expiry` makes an
        immediate order's unfilled remainder expire as Binance's self-trade prevention does
        (EXPIRED_IN_MATCH); `maker_fee` / `taker_fee` the rates this account pays (two emulators
        with different fees and depth make routing choose). Raises ValueError for a value the
        simulation settings refuse."""
        if depth_levels is not None:
            if not 1 <= depth_levels <= 100:
                raise ValueError("depth_levels must be from 1 to 100")
            self.sim = self.sim.model_copy(update={"depth_levels": depth_levels})
        for name, rate in (("maker_fee", maker_fee), ("taker_fee", taker_fee)):
            if rate is not None:
                if not 0 <= rate <= 0.01:
                    raise ValueError(f"{name} must be from 0 to 0.01")
                self.sim = self.sim.model_copy(update={name: rate})
        if self_trade_expiry is not None:
            self.self_trade_expiry = self_trade_expiry

    def settings(self) -> dict:
        return {"depth_levels": self.sim.depth_levels, "self_trade_expiry": self.self_trade_expiry,
                "maker_fee": self.sim.maker_fee, "taker_fee": self.sim.taker_fee}

    def reset(self) -> None:
        self.sim = self._configured_sim
        self.self_trade_expiry = False
        self.orders: list[EmuOrder] = []  # every order ever placed, in placement order
        self.trades: list[Trade] = []
        self.rejected_duplicates = 0
        self._by_id: dict[int, EmuOrder] = {}
        self._by_client_id: dict[str, list[EmuOrder]] = {}
        self._open: dict[int, EmuOrder] = {}
        self._totals: dict[str, Decimal] = dict(self._initial)
        self._locks: dict[int, tuple[str, Decimal]] = {}  # order id -> (asset, amount) it holds

    # -- placing -------------------------------------------------------------------------------

    def place(self, placement: Placement) -> EmuOrder:
        """Validate against the market's filters and the account, then submit to the model."""
        market = simulated_market(placement.symbol)
        if market is None:
            raise BookError(Rejection.UNKNOWN_SYMBOL, placement.symbol)
        now = utc_now()
        quantity = self._quantity(placement, market, now)
        self._check_filters(placement, quantity, market, now)
        self._check_duplicate(placement.client_order_id)
        self._check_funds(placement, quantity, market, now)
        order_id = self._next_order_id
        self._next_order_id += 1
        if placement.post_only and self.would_take(placement):
            sim = _refused_post_only(placement, quantity, order_id, now)
        else:
            request = VenueOrderRequest(
                exchange="emulator", client_order_id=placement.client_order_id, symbol=placement.symbol,
                side=placement.side, order_type=placement.order_type, quantity=quantity,
                limit_price=placement.price, time_in_force=placement.time_in_force,
            )
            sim = venue_model.submit(request, str(order_id), now, self.sim)
        order = EmuOrder(id=order_id, sim=sim, placement=placement, market=market,
                         created_ms=to_ms(now), updated_ms=to_ms(now),
                         expired_in_match=self.self_trade_expiry and sim.status == VenueOrderStatus.EXPIRED)
        self.orders.append(order)
        self._by_id[order_id] = order
        if placement.client_order_id:
            self._by_client_id.setdefault(placement.client_order_id, []).append(order)
        if order.is_open:
            self._open[order_id] = order
        self._apply(order)
        return order

    def would_take(self, placement: Placement) -> bool:
        """Whether a limit order at this price would cross the book now."""
        if placement.order_type != OrderType.LIMIT or placement.price is None:
            return True
        bid, ask = venue_model.top_of_book(placement.symbol, utc_now(), self.sim)
        return ask <= placement.price if placement.side == Side.BUY else bid >= placement.price

    def _quantity(self, placement: Placement, market: MarketInfo, now: datetime) -> Decimal:
        if placement.quantity is not None:
            return placement.quantity
        # A market order sized in quote: the base quantity the touch price buys, at the lot step.
        assert placement.quote_quantity is not None
        bid, ask = venue_model.top_of_book(placement.symbol, now, self.sim)
        slip = Decimal(repr(self.sim.slippage))
        price = ask * (1 + slip) if placement.side == Side.BUY else bid * (1 - slip)
        steps = (placement.quote_quantity / price / market.amount_step).to_integral_value(ROUND_DOWN)
        return steps * market.amount_step

    def _check_filters(self, placement: Placement, quantity: Decimal, market: MarketInfo,
                       now: datetime) -> None:
        if placement.price is not None and not _steps(placement.price, market.price_step):
            raise BookError(Rejection.PRICE_FILTER, f"tick size {market.price_step}")
        if not _steps(quantity, market.amount_step):
            raise BookError(Rejection.LOT_SIZE, f"step size {market.amount_step}")
        if quantity < market.min_amount or quantity <= 0:
            raise BookError(Rejection.MIN_QTY, f"minimum quantity {market.min_amount}")
        if quantity > max_quantity(market):
            raise BookError(Rejection.MAX_QTY, f"maximum quantity {max_quantity(market)}")
        price = placement.price or venue_model.mid_price(placement.symbol, now, self.sim)
        if quantity * price < market.min_notional:
            raise BookError(Rejection.MIN_NOTIONAL, f"minimum notional {market.min_notional}")

    def _check_duplicate(self, client_order_id: str) -> None:
        if not client_order_id:
            return
        earlier = self._by_client_id.get(client_order_id, [])
        if self.duplicates == DuplicateRule.OPEN:
            for order in earlier:
                self._sync(order)
            earlier = [o for o in earlier if o.is_open]
        if earlier:
            self.rejected_duplicates += 1
            raise BookError(Rejection.DUPLICATE_CLIENT_ID, client_order_id)

    def _check_funds(self, placement: Placement, quantity: Decimal, market: MarketInfo,
                     now: datetime) -> None:
        if placement.side == Side.SELL:
            asset, needed = market.base, quantity
        elif placement.order_type == OrderType.LIMIT and placement.price is not None:
            asset, needed = market.quote, quantity * placement.price
        else:
            asset, needed = market.quote, self._market_buy_cost(placement.symbol, quantity, now)
        if needed > self.free(asset):
            raise BookError(Rejection.INSUFFICIENT_BALANCE, f"{asset} needed {needed}")

    def _market_buy_cost(self, symbol: str, quantity: Decimal, now: datetime) -> Decimal:
        """Upper bound of what walking the asks costs (with the base slippage)."""
        slip = Decimal(repr(self.sim.slippage))
        cost, left = Decimal(0), quantity
        levels = venue_model.book_side(symbol, Side.BUY, now, self.sim)
        for price, size in levels:
            take = min(left, size)
            cost += take * price * (1 + slip)
            left -= take
            if left <= 0:
                break
        return cost + left * levels[-1][0] * (1 + slip)

    def depth(self, symbol: str, limit: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """(bids, asks) now, best first, at tick and lot precision: bids rounded down, asks up."""
        market = simulated_market(symbol)
        assert market is not None
        now = utc_now()

        def levels(taker_side: Side, rounding: str) -> list[tuple[Decimal, Decimal]]:
            out = []
            for price, _ in venue_model.book_side(symbol, taker_side, now, self.sim)[:limit]:
                tick = (price / market.price_step).to_integral_value(rounding) * market.price_step
                lots = (level_notional(symbol) / tick / market.amount_step).to_integral_value(ROUND_DOWN)
                out.append((tick, lots * market.amount_step))
            return out

        return levels(Side.SELL, ROUND_DOWN), levels(Side.BUY, ROUND_UP)

    # -- reading and changing orders -----------------------------------------------------------

    def find(self, *, order_id: int | None = None, client_order_id: str | None = None,
             symbol: str | None = None) -> EmuOrder:
        """An order by venue id, else the latest one with this client id; synced to now."""
        order: EmuOrder | None = None
        if order_id is not None:
            order = self._by_id.get(order_id)
        elif client_order_id:
            found = self._by_client_id.get(client_order_id)
            order = found[-1] if found else None
        if order is None or (symbol is not None and order.placement.symbol != symbol):
            raise BookError(Rejection.UNKNOWN_ORDER)
        self._sync(order)
        return order

    def cancel(self, order: EmuOrder) -> EmuOrder:
        self._sync(order)
        if not order.is_open:
            raise BookError(Rejection.ORDER_CLOSED, order.status.value)
        venue_model.cancel(order.sim, utc_now(), self.sim)
        self._apply(order)
        return order

    def trade_through(self, order: EmuOrder) -> EmuOrder:
        """Fill a resting limit order now at its price (scripted crossing; see venue_model)."""
        self._sync(order)
        if not order.is_open or order.price is None:
            raise BookError(Rejection.ORDER_CLOSED, order.status.value)
        venue_model.trade_through(order.sim, utc_now(), self.sim)
        self._apply(order)
        return order

    def amend(self, order: EmuOrder, quantity: Decimal | None, price: Decimal | None) -> EmuOrder:
        """Native amend (Bybit): new total quantity and/or price, keeping the order's identity."""
        self._sync(order)
        if not order.is_open:
            raise BookError(Rejection.ORDER_CLOSED, order.status.value)
        if price is not None and not _steps(price, order.market.price_step):
            raise BookError(Rejection.PRICE_FILTER, f"tick size {order.market.price_step}")
        if quantity is not None and not _steps(quantity, order.market.amount_step):
            raise BookError(Rejection.LOT_SIZE, f"step size {order.market.amount_step}")
        try:
            venue_model.amend(order.sim, quantity, price, utc_now(), self.sim)
        except ValueError as exc:
            raise BookError(Rejection.INVALID_AMEND, str(exc)) from None
        order.updated_ms = to_ms(utc_now())
        self._apply(order)
        return order

    def open_orders(self, symbol: str | None = None) -> list[EmuOrder]:
        for order in list(self._open.values()):
            self._sync(order)
        return [o for o in self._open.values() if symbol is None or o.placement.symbol == symbol]

    def all_orders(self, symbol: str | None = None) -> list[EmuOrder]:
        self.open_orders(symbol)
        return [o for o in self.orders if symbol is None or o.placement.symbol == symbol]

    def list_trades(self, symbol: str | None = None) -> list[Trade]:
        self.open_orders(symbol)
        return [t for t in self.trades if symbol is None or t.order.placement.symbol == symbol]

    # -- balances ------------------------------------------------------------------------------

    def free(self, asset: str) -> Decimal:
        return self._totals.get(asset, Decimal(0)) - self.locked(asset)

    def locked(self, asset: str) -> Decimal:
        return sum((amount for a, amount in self._locks.values() if a == asset), Decimal(0))

    def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        """asset -> (free, locked), every open order advanced first."""
        self.open_orders()
        assets = sorted(set(self._totals) | {a for a, _ in self._locks.values()})
        return {a: (self.free(a), self.locked(a)) for a in assets}

    # -- internals -----------------------------------------------------------------------------

    def _sync(self, order: EmuOrder) -> None:
        if order.is_open:
            venue_model.advance(order.sim, utc_now(), self.sim)
            self._apply(order)

    def _apply(self, order: EmuOrder) -> None:
        """Book the order's new fills into trades and balances; refresh what it holds."""
        market = order.market
        for fill in order.sim.fills[len(order.trades):]:
            rate = Decimal(repr(self.sim.maker_fee if fill.liquidity == "maker" else self.sim.taker_fee))
            cost = fill.price * fill.quantity
            if order.placement.side == Side.BUY:
                fee, fee_asset = (fill.quantity * rate).quantize(FEE_QUANTUM), market.base
                self._add(market.quote, -cost)
                self._add(market.base, fill.quantity - fee)
            else:
                fee, fee_asset = fill.fee, market.quote
                self._add(market.base, -fill.quantity)
                self._add(market.quote, cost - fee)
            trade = Trade(id=self._next_trade_id, order=order, fill=fill, fee=fee, fee_asset=fee_asset)
            self._next_trade_id += 1
            order.trades.append(trade)
            self.trades.append(trade)
            order.updated_ms = max(order.updated_ms, to_ms(fill.at))
        if order.is_open:
            remaining = order.sim.remaining
            if order.placement.side == Side.BUY:
                self._locks[order.id] = (market.quote, remaining * (order.price or Decimal(0)))
            else:
                self._locks[order.id] = (market.base, remaining)
        else:
            self._locks.pop(order.id, None)
            closed_now = self._open.pop(order.id, None) is not None
            if closed_now and order.status != VenueOrderStatus.FILLED:
                order.updated_ms = to_ms(utc_now())  # cancelled: a filled order keeps its last fill's time

    def _add(self, asset: str, amount: Decimal) -> None:
        self._totals[asset] = self._totals.get(asset, Decimal(0)) + amount

    def duplicate_client_order_ids(self) -> list[str]:
        return [cid for cid, orders in self._by_client_id.items() if len(orders) > 1]
