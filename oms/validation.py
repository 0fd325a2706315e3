"""The Order Validator: pure rules, each refusal a `Denial` with a reason from `DenialReason`.

Prices: the venue's price (`VenuePrices`, read by an activity) wherever the venue has one. A
signal's `reference_price` can only narrow a protection, never loosen it: it must lie within
REFERENCE_BAND of the venue's price (a stale or mistyped decision price would otherwise wreck the
slippage recorded against it), it raises the valuation used for `max_order_value` and lowers the
one used for `min_order_size`, and a limit must sit within the fat-finger band of both prices.

Account limits (`min_order_size`, `max_order_value`) are order VALUES in `account_limits.currency`:
the value in the market's quote currency times the venue's price of that currency. The venue's own
minimums (`min_amount`, `min_notional`) are in the market's units, as the venue checks them. The
daily order cap needs shared state and lives in `activities/limits.py`. An amend is validated as
the order it would become (`validate_amend`), before anything reaches the venue.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel

from config.settings import AccountLimits
from oms.generation import OrderInstruction
from oms.models import AmendRequest, OrderSnapshot, OrderType, Side, TimeInForce
from oms.pricing import VenuePrices, to_account_currency
from oms.venue import MarketInfo

FAT_FINGER_BAND = Decimal("0.10")  # a limit at most 10 % through the market
REFERENCE_BAND = Decimal("0.10")  # a signal's reference price at most 10 % from the venue's
# What the venues and the database (DECIMAL(38, 12)) can hold, with room: beyond is nonsense.
MAX_QUANTITY = Decimal("1e15")
MAX_PRICE = Decimal("1e12")


class DenialReason(StrEnum):
    NON_POSITIVE_QUANTITY = "non_positive_quantity"
    MISSING_LIMIT_PRICE = "missing_limit_price"
    UNKNOWN_SYMBOL = "unknown_symbol"
    UNKNOWN_EXCHANGE = "unknown_exchange"
    MARKET_INACTIVE = "market_inactive"
    LOT_SIZE = "lot_size"
    TICK_SIZE = "tick_size"
    BELOW_MIN_AMOUNT = "below_min_amount"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    BELOW_MIN_ORDER_SIZE = "below_min_order_size"
    ABOVE_MAX_ORDER_VALUE = "above_max_order_value"
    NO_PRICE = "no_price"
    GTD_IN_PAST = "gtd_in_past"
    LIMIT_OUTSIDE_COLLAR = "limit_outside_collar"
    DAILY_ORDER_LIMIT = "daily_order_limit"
    OUT_OF_BOUNDS = "out_of_bounds"
    REFERENCE_PRICE_FAR = "reference_price_far"
    ALGO_NOT_SUPPORTED = "algo_not_supported"
    INVALID_ALGO_PARAMETERS = "invalid_algo_parameters"  # twap / iceberg parameters it cannot honour
    AMEND_NOT_APPLICABLE = "amend_not_applicable"


class Denial(BaseModel):
    reason: DenialReason
    message: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


def _multiple_of(value: Decimal, step: Decimal) -> bool:
    return step <= 0 or (value / step) == (value / step).to_integral_value()


def _deny(reason: DenialReason, message: str) -> Denial:
    return Denial(reason=reason, message=message)


def _bounds(quantity: Decimal, *prices: Decimal | None) -> Denial | None:
    if quantity > MAX_QUANTITY:
        return _deny(DenialReason.OUT_OF_BOUNDS, f"quantity {quantity} exceeds the bound {MAX_QUANTITY}")
    for price in prices:
        if price is not None and price > MAX_PRICE:
            return _deny(DenialReason.OUT_OF_BOUNDS, f"price {price} exceeds the bound {MAX_PRICE}")
    return None


def _algorithm(order: OrderInstruction) -> Denial | None:
    """A single order runs no algorithm: a signal with execution.algo becomes a parent order
    (ParentOrderWorkflow, oms/algos.py); algorithm parameters without an algo are refused."""
    asked = [f"{name} {value}" for name, value in
             (("algo", order.algo), ("slices", order.slices), ("duration_s", order.duration_s)) if value is not None]
    if asked:
        return _deny(DenialReason.ALGO_NOT_SUPPORTED,
                     f"a single order runs no execution algorithm ({', '.join(asked)}); name execution.algo "
                     "(twap or iceberg) to work it as a parent order, or send it without them")
    return None


def _exchange_rules(quantity: Decimal, remainder: Decimal, limit_price: Decimal | None,
                    market: MarketInfo) -> Denial | None:
    """Lot and tick size, and the venue's minimum amount of what goes to the venue (`remainder`)."""
    if not market.active:
        return _deny(DenialReason.MARKET_INACTIVE, f"{market.symbol} is not trading")
    for name, value in (("quantity", quantity), ("remaining quantity", remainder)):
        if not _multiple_of(value, market.amount_step):
            return _deny(DenialReason.LOT_SIZE, f"{name} {value} is not a multiple of the lot size {market.amount_step}")
    if limit_price is not None and not _multiple_of(limit_price, market.price_step):
        return _deny(DenialReason.TICK_SIZE,
                     f"limit price {limit_price} is not a multiple of the tick size {market.price_step}")
    if remainder < market.min_amount:
        return _deny(DenialReason.BELOW_MIN_AMOUNT, f"quantity {remainder} is below the venue minimum {market.min_amount}")
    return None


def _price_rules(order: OrderInstruction, side: Side, signal_reference: Decimal | None, quantity: Decimal,
                 remainder: Decimal, market: MarketInfo, limits: AccountLimits,
                 prices: VenuePrices | None) -> Denial | None:
    """Everything that needs a price: the reference band, the venue's minimum notional, the account
    limits in the account currency, and the fat-finger band."""
    venue = prices.mid if prices is not None else None
    if venue is not None and signal_reference is not None and abs(signal_reference - venue) > venue * REFERENCE_BAND:
        return _deny(DenialReason.REFERENCE_PRICE_FAR,
                     f"reference price {signal_reference} is more than {REFERENCE_BAND:.0%} from the venue price {venue}")
    # The price the order trades at, as the venue values it: its limit, else the market.
    own = order.limit_price if order.order_type == OrderType.LIMIT else (venue or signal_reference)
    if own is None:
        return _deny(DenialReason.NO_PRICE, f"no venue, limit or reference price to value the {market.symbol} order")
    notional = remainder * own
    if notional < market.min_notional:
        return _deny(DenialReason.BELOW_MIN_NOTIONAL,
                     f"order value {notional:.8f} {market.quote} is below the venue minimum notional "
                     f"{market.min_notional} {market.quote}")
    # Worst-case value for the maximum: a buy limit never pays above its limit; a sell limit or a
    # market order trades at the market (or better for us). The reference price only raises it.
    highest = [own]
    if venue is not None and (order.order_type == OrderType.MARKET or side == Side.SELL):
        highest.append(venue)
    lowest = [own]
    if signal_reference is not None:
        highest.append(signal_reference)
        lowest.append(signal_reference)
    currency = limits.currency
    if prices is None:  # nothing read at the venue: only an order already in the account currency
        prices = VenuePrices(account_currency=currency, conversion_price=Decimal(1) if market.quote == currency else None)
    high = to_account_currency(quantity * max(highest), prices)
    low = to_account_currency(quantity * min(lowest), prices)
    if high is None or low is None:
        return _deny(DenialReason.NO_PRICE,
                     f"no {market.quote}/{currency} price at the venue to value the order in {currency}")
    if low < Decimal(repr(limits.min_order_size)):
        return _deny(DenialReason.BELOW_MIN_ORDER_SIZE,
                     f"order value {low:.2f} {currency} is below min_order_size {limits.min_order_size} {currency}")
    if high > Decimal(repr(limits.max_order_value)):
        return _deny(DenialReason.ABOVE_MAX_ORDER_VALUE,
                     f"order value {high:.2f} {currency} exceeds max_order_value {limits.max_order_value} {currency}")
    if order.order_type == OrderType.LIMIT:
        for name, anchor in (("venue price", venue), ("reference price", signal_reference)):
            if anchor is None:
                continue
            far = anchor * (1 + FAT_FINGER_BAND) if side == Side.BUY else anchor * (1 - FAT_FINGER_BAND)
            if (side == Side.BUY and order.limit_price > far) or (side == Side.SELL and order.limit_price < far):
                return _deny(DenialReason.LIMIT_OUTSIDE_COLLAR,
                             f"limit price {order.limit_price} is more than {FAT_FINGER_BAND:.0%} through the {name} {anchor}")
    return None


def validate_order(order: OrderInstruction, side: Side, market: MarketInfo, limits: AccountLimits,
                   now: datetime, prices: VenuePrices | None = None,
                   signal_reference: Decimal | None = None) -> Denial | None:
    """The first rule the order breaks, or None. Order of checks: sanity, exchange, account.

    `prices`: what the venue quoted (None: nothing read, valued from the order's own prices and
    only in the account currency). `signal_reference`: the signal's own reference price, which can
    only narrow the protections (the instruction's reference may be the venue's mid)."""
    q = order.quantity
    if q <= 0:
        return _deny(DenialReason.NON_POSITIVE_QUANTITY, f"quantity {q} must be positive")
    denial = _bounds(q, order.limit_price, signal_reference) or _algorithm(order)
    if denial:
        return denial
    if order.order_type == OrderType.LIMIT and order.limit_price is None:
        return _deny(DenialReason.MISSING_LIMIT_PRICE, "a limit order needs limit_price")
    if order.time_in_force == TimeInForce.GTD and (order.expire_at is None or order.expire_at <= now):
        return _deny(DenialReason.GTD_IN_PAST, f"expire_at {order.expire_at} is not in the future")
    return (_exchange_rules(q, q, order.limit_price, market)
            or _price_rules(order, side, signal_reference, q, q, market, limits, prices))


def validate_amend(order: OrderSnapshot, request: AmendRequest, market: MarketInfo, limits: AccountLimits,
                   now: datetime, prices: VenuePrices | None, signal_reference: Decimal | None,
                   check_prices: bool = True) -> Denial | None:
    """An amend, validated as the order it would become: every rule of `validate_order` on the
    new total quantity and price, and the venue's minimums on what would remain to fill.
    `check_prices=False`: only the rules that need no price (an update validator, which cannot
    read the venue; the full check follows at the venue's current price)."""
    if request.limit_price is not None and order.order_type != OrderType.LIMIT:
        return _deny(DenialReason.AMEND_NOT_APPLICABLE, "a market order has no limit price to amend")
    quantity = request.quantity if request.quantity is not None else order.quantity
    price = request.limit_price if request.limit_price is not None else order.limit_price
    if quantity <= order.filled_quantity:
        return _deny(DenialReason.AMEND_NOT_APPLICABLE,
                     f"quantity {quantity} is not above the filled quantity {order.filled_quantity}")
    denial = _bounds(quantity, price)
    if denial:
        return denial
    if order.time_in_force == TimeInForce.GTD and order.expire_at is not None and order.expire_at <= now:
        return _deny(DenialReason.GTD_IN_PAST, f"expire_at {order.expire_at} has passed")
    venue = prices.mid if prices is not None else None
    if venue is not None and signal_reference is not None and abs(signal_reference - venue) > venue * REFERENCE_BAND:
        # The market has moved away from the decision price since the order was placed: that is
        # no reason to refuse every amend, and the venue's price still bounds it.
        signal_reference = None
    instruction = OrderInstruction(
        order_type=order.order_type, time_in_force=order.time_in_force, exchange=order.exchange,
        quantity=quantity, limit_price=price, expire_at=order.expire_at, start_at=None,
        reference_price=signal_reference, price_collar=None, estimated_fee=None, estimated_slippage_bps=None)
    remainder = quantity - order.filled_quantity
    denial = _exchange_rules(quantity, remainder, price, market)
    if denial or not check_prices:
        return denial
    return _price_rules(instruction, order.side, signal_reference, quantity, remainder, market, limits, prices)
