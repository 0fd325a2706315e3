"""Order generation: from a signal to an order instruction (pure, runs inside the workflow).

Resolves what the signal leaves open from the order parameters (type, time in force, venue),
adds a price collar for market orders (max_slippage_bps against the venue's price; a signal's
reference price can only narrow it) and a pre-trade estimate of fees and slippage. `plan_slices` is
an even split; parent orders plan their algorithms with oms/algos.py (ParentOrderWorkflow).
"""
from __future__ import annotations

from datetime import datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal

from pydantic import BaseModel

from config.settings import OrderParams
from oms.models import ExecutionAlgo, OrderType, Side, Signal, TimeInForce
from oms.venue import MarketInfo

BPS = Decimal(10_000)


class OrderInstruction(BaseModel):
    order_type: OrderType
    time_in_force: TimeInForce
    exchange: str
    quantity: Decimal
    limit_price: Decimal | None
    expire_at: datetime | None
    start_at: datetime | None
    reference_price: Decimal | None
    price_collar: Decimal | None  # worst acceptable average price of a market order
    estimated_fee: Decimal | None
    estimated_slippage_bps: Decimal | None
    # What the signal asked of an execution algorithm: a single order refuses it (parent orders run them).
    algo: ExecutionAlgo | None = None
    slices: int | None = None
    duration_s: int | None = None


class Slice(BaseModel):
    index: int
    quantity: Decimal
    delay_s: float  # after the start of execution


def route(signal: Signal, mode: str, direct_exchanges: list[str]) -> str:
    """The venue for a signal: its own choice if it names one, else by execution mode."""
    if signal.exchange:
        return signal.exchange
    if mode == "direct" and direct_exchanges:
        return direct_exchanges[0]
    if mode == "quantconnect":
        return "quantconnect"
    return "simulation"


def price_collar(side: Side, reference_price: Decimal, max_slippage_bps: Decimal,
                 floor: Decimal = Decimal("0.00000001")) -> Decimal:
    """The worst acceptable price. A sell collar never reaches zero, whatever max_slippage_bps
    (10000 bps would otherwise sell at 0): it stops at `floor`, the market's tick."""
    factor = max_slippage_bps / BPS
    if side == Side.BUY:
        return reference_price * (1 + factor)
    return max(reference_price * (1 - factor), floor)


def market_collar(side: Side, venue_price: Decimal | None, signal_reference: Decimal | None,
                  max_slippage_bps: Decimal, floor: Decimal) -> Decimal | None:
    """The collar of a market order: from the venue's price where there is one; the signal's
    reference price can only make it tighter (a lower buy cap, a higher sell floor)."""
    collars = [price_collar(side, p, max_slippage_bps, floor) for p in (venue_price, signal_reference) if p is not None]
    if not collars:
        return None
    return min(collars) if side == Side.BUY else max(collars)


def generate_order(signal: Signal, params: OrderParams, exchange: str, market: MarketInfo | None,
                   reference_price: Decimal | None, slippage_bps: Decimal | None) -> OrderInstruction:
    """`reference_price` is the venue's price (mid) when the venue has one; the instruction's
    reference price (for slippage) is the signal's own, else the venue's."""
    order_type = signal.order_type or (
        OrderType.LIMIT if signal.limit_price is not None else OrderType(params.default_order_type)
    )
    tif = signal.time_in_force or (
        TimeInForce.GTD if signal.expire_at else TimeInForce(params.time_in_force)
    )
    reference = signal.reference_price or reference_price
    collar = None
    if order_type == OrderType.MARKET:
        floor = market.price_step if market is not None and market.price_step > 0 else Decimal("0.00000001")
        collar = market_collar(signal.side, reference_price, signal.reference_price,
                               Decimal(repr(params.max_slippage_bps)), floor)
    fee = None
    price_for_fee = signal.limit_price or reference
    if market is not None and price_for_fee is not None:
        rate = market.maker_fee if order_type == OrderType.LIMIT else market.taker_fee
        fee = (signal.quantity * price_for_fee * rate).quantize(Decimal("0.00000001"))
    return OrderInstruction(
        order_type=order_type,
        time_in_force=tif,
        exchange=exchange,
        quantity=signal.quantity,
        limit_price=signal.limit_price,
        expire_at=signal.expire_at,
        start_at=signal.execution.start_at if signal.execution else None,
        reference_price=reference,
        price_collar=collar,
        estimated_fee=fee,
        estimated_slippage_bps=slippage_bps if order_type == OrderType.MARKET else Decimal(0),
        algo=signal.execution.algo if signal.execution else None,
        slices=signal.execution.slices if signal.execution else None,
        duration_s=signal.execution.duration_s if signal.execution else None,
    )


def venue_terms(order_type: OrderType, time_in_force: TimeInForce, limit_price: Decimal | None, side: Side,
                collar: Decimal | None, price_step: Decimal | None) -> tuple[OrderType, Decimal | None, TimeInForce]:
    """How an order goes out to the venue: (type, price, time in force). GTD is enforced by the
    workflow's durable timer (not every venue has it), so it goes out GTC; a market order with a
    collar goes out as an IOC (or FOK) limit at the collar on the tick grid, so nothing executes
    beyond max_slippage_bps."""
    if time_in_force == TimeInForce.GTD:
        time_in_force = TimeInForce.GTC
    if order_type == OrderType.MARKET and collar is not None and price_step:
        rounding = ROUND_FLOOR if side == Side.BUY else ROUND_CEILING
        limit_price = (collar / price_step).to_integral_value(rounding=rounding) * price_step
        order_type = OrderType.LIMIT
        time_in_force = TimeInForce.FOK if time_in_force == TimeInForce.FOK else TimeInForce.IOC
    return order_type, limit_price, time_in_force


def plan_slices(signal: Signal, market: MarketInfo) -> list[Slice]:
    """Child orders for TWAP / iceberg: lot-size multiples summing exactly to the quantity."""
    execution = signal.execution
    if execution is None or execution.algo is None:
        return [Slice(index=0, quantity=signal.quantity, delay_s=0)]
    count = execution.slices or 4
    step = market.amount_step
    unit = (signal.quantity / count / step).to_integral_value(rounding=ROUND_DOWN) * step
    if unit <= 0:
        return [Slice(index=0, quantity=signal.quantity, delay_s=0)]
    quantities = [unit] * (count - 1) + [signal.quantity - unit * (count - 1)]
    spacing = (execution.duration_s or 0) / count if execution.algo == ExecutionAlgo.TWAP else 0
    return [Slice(index=i, quantity=q, delay_s=i * spacing) for i, q in enumerate(quantities)]
