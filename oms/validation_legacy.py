"""Release-0.1 validation rules, frozen: kept only so orders recorded by that release replay.

An order whose recorded `prepare_order` result carries no `VenuePrices` (prepared by release 0.1)
is validated here, as it was then, so its history produces the same commands; every order prepared
by this release is validated by `oms.validation.validate_order`. Do not change these rules.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from config.settings import AccountLimits
from oms.generation import OrderInstruction
from oms.models import OrderType, Side, TimeInForce
from oms.validation import Denial, DenialReason
from oms.venue import MarketInfo


def _multiple_of(value: Decimal, step: Decimal) -> bool:
    return step <= 0 or (value / step) == (value / step).to_integral_value()


def validate_order_v1(order: OrderInstruction, side: Side, market: MarketInfo, limits: AccountLimits,
                   now: datetime) -> Denial | None:
    """The first rule the order breaks, or None. Order of checks: sanity, exchange, account."""
    q = order.quantity
    if q <= 0:
        return Denial(reason=DenialReason.NON_POSITIVE_QUANTITY, message=f"quantity {q} must be positive")
    if order.order_type == OrderType.LIMIT and order.limit_price is None:
        return Denial(reason=DenialReason.MISSING_LIMIT_PRICE, message="a limit order needs limit_price")
    if order.time_in_force == TimeInForce.GTD and (order.expire_at is None or order.expire_at <= now):
        return Denial(reason=DenialReason.GTD_IN_PAST, message=f"expire_at {order.expire_at} is not in the future")
    if not market.active:
        return Denial(reason=DenialReason.MARKET_INACTIVE, message=f"{market.symbol} is not trading")
    if not _multiple_of(q, market.amount_step):
        return Denial(reason=DenialReason.LOT_SIZE,
                      message=f"quantity {q} is not a multiple of the lot size {market.amount_step}")
    if order.limit_price is not None and not _multiple_of(order.limit_price, market.price_step):
        return Denial(reason=DenialReason.TICK_SIZE,
                      message=f"limit price {order.limit_price} is not a multiple of the tick size {market.price_step}")
    if q < market.min_amount:
        return Denial(reason=DenialReason.BELOW_MIN_AMOUNT,
                      message=f"quantity {q} is below the venue minimum {market.min_amount}")
    price = order.limit_price or order.reference_price
    if price is None:
        return Denial(reason=DenialReason.NO_PRICE, message="no limit or reference price to value the order")
    value = q * price
    if value < market.min_notional:
        return Denial(reason=DenialReason.BELOW_MIN_NOTIONAL,
                      message=f"order value {value:.8f} is below the venue minimum notional {market.min_notional}")
    if value < Decimal(repr(limits.min_order_size)):
        return Denial(reason=DenialReason.BELOW_MIN_ORDER_SIZE,
                      message=f"order value {value:.2f} is below min_order_size {limits.min_order_size}")
    if value > Decimal(repr(limits.max_order_value)):
        return Denial(reason=DenialReason.ABOVE_MAX_ORDER_VALUE,
                      message=f"order value {value:.2f} exceeds max_order_value {limits.max_order_value}")
    if order.order_type == OrderType.LIMIT and order.reference_price is not None and order.price_collar is None:
        # A limit far through the market is a fat-finger: allow at most 10% through the reference.
        far = order.reference_price * Decimal("1.10") if side == Side.BUY else order.reference_price * Decimal("0.90")
        if (side == Side.BUY and order.limit_price > far) or (side == Side.SELL and order.limit_price < far):
            return Denial(reason=DenialReason.LIMIT_OUTSIDE_COLLAR,
                          message=f"limit price {order.limit_price} is more than 10% through the reference {order.reference_price}")
    return None
