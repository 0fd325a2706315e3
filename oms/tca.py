"""Transaction cost analysis of one order (pure, exact Decimal; runs inside the workflow).

What an order cost against the prices it was decided and sent at. One sign convention for every
money figure here: P&L-signed, so a NEGATIVE number is a COST to us and a positive one a gain
(a buy filled below arrival, a maker rebate). Money is in the order's quote currency.

- decision price: the signal's `reference_price` (the strategy's price when it decided), if given.
- arrival price: the venue mid read when the order was prepared for submission (re-read after a
  `start_at` wait). Without a decision price, the decision benchmark is the arrival price.
- arrival slippage = -side * (average fill - arrival) * filled   (and in bps of arrival notional)
- fee impact = -fees (quote; a rebate is positive), in bps of the filled notional
- implementation shortfall (Perold), against the paper order at the decision price:
    delay       = -side * (arrival - decision) * filled
    execution   = arrival slippage
    fees        = fee impact
    opportunity = -side * (mark - decision) * unfilled   (mark: the last price the order saw:
                  its average fill, else arrival; a caller with a later price passes it)
  total = the sum, also in bps of the paper notional (quantity * decision).
- latency stages from the order's transitions (workflow clock; a fill carries the venue's time).

Fees in a third asset (a BNB discount, `other_fees`) have no quote price here and are left out.
"""
from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # oms.models imports this module for the snapshot's `tca` field
    from oms.models import OrderSnapshot

BPS = Decimal(10_000)
MONEY_QUANTUM = Decimal("1e-12")  # the database's DECIMAL(38, 12)
BPS_QUANTUM = Decimal("0.0001")
MS_QUANTUM = Decimal("0.001")

# States that answer a submission: the venue acknowledged (or refused, or filled) the order.
VENUE_ANSWER_STATES = frozenset({"accepted", "partially_filled", "filled", "rejected", "cancelled", "expired"})
FILL_STATES = frozenset({"partially_filled", "filled"})
TERMINAL = frozenset({"filled", "cancelled", "denied", "rejected", "expired", "failed"})


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def bps(value: Decimal, base: Decimal) -> Decimal | None:
    if not base:
        return None
    return (value / base * BPS).quantize(BPS_QUANTUM, rounding=ROUND_HALF_EVEN)


def ms_between(start: datetime | None, end: datetime | None) -> Decimal | None:
    if start is None or end is None:
        return None
    delta = end - start
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (Decimal(micros) / 1000).quantize(MS_QUANTUM)


class LatencyStages(BaseModel):
    """Milliseconds spent in each stage; None where the order never reached its end."""

    signal_to_start_ms: Decimal | None = None  # signal's created_at -> workflow start
    start_to_validated_ms: Decimal | None = None
    validated_to_sent_ms: Decimal | None = None
    sent_to_ack_ms: Decimal | None = None  # submission -> the venue's first answer
    ack_to_first_fill_ms: Decimal | None = None
    first_fill_to_terminal_ms: Decimal | None = None
    execution_ms: Decimal | None = None  # sent -> terminal: how long the venue worked the order
    total_ms: Decimal | None = None  # workflow start -> terminal


class Shortfall(BaseModel):
    delay: Decimal
    execution: Decimal
    fees: Decimal
    opportunity: Decimal
    total: Decimal
    total_bps: Decimal | None


class OrderTCA(BaseModel):
    """Stored on the order (snapshot `tca`): inputs set before submission, results on every publish."""

    quote_currency: str
    decision_price: Decimal | None = None
    arrival_price: Decimal | None = None
    signal_at: datetime | None = None
    algorithm: str | None = None  # the signal's execution.algo (children inherit their parent's)
    estimated_fee: Decimal | None = None  # pre-trade, quote (positive: a charge, as venues quote it)
    estimated_slippage_bps: Decimal | None = None  # pre-trade, cost-positive as the estimator gives it
    # realized
    fill_ratio: Decimal = Decimal(0)
    average_fill_price: Decimal | None = None
    notional: Decimal = Decimal(0)  # filled quantity * average fill price
    arrival_slippage: Decimal | None = None
    arrival_slippage_bps: Decimal | None = None
    fees: Decimal = Decimal(0)
    fee_bps: Decimal | None = None  # fee impact: -fees in bps of the notional
    shortfall: Shortfall | None = None
    latency: LatencyStages = Field(default_factory=LatencyStages)


def side_sign(side: str) -> int:
    return 1 if side == "buy" else -1


def pre_trade(symbol: str, decision: Decimal | None, arrival: Decimal | None, signal_at: datetime | None,
              algorithm: str | None, estimated_fee: Decimal | None,
              estimated_slippage_bps: Decimal | None) -> OrderTCA:
    return OrderTCA(quote_currency=symbol.split("/", 1)[1], decision_price=decision, arrival_price=arrival,
                    signal_at=signal_at, algorithm=algorithm, estimated_fee=estimated_fee,
                    estimated_slippage_bps=estimated_slippage_bps)


def costs(tca: OrderTCA, side: str, quantity: Decimal, filled: Decimal, average: Decimal | None, fees: Decimal,
          mark: Decimal | None = None) -> OrderTCA:
    """The realized figures of an order or a parent (filled quantity at `average`, `fees` in quote)."""
    sign = side_sign(side)
    notional = money(filled * average) if average is not None and filled else Decimal(0)
    out = tca.model_copy(update={
        "fill_ratio": filled / quantity if quantity else Decimal(0), "average_fill_price": average,
        "notional": notional, "fees": fees, "fee_bps": bps(-fees, notional) if notional else None,
    })
    arrival, decision = tca.arrival_price, tca.decision_price or tca.arrival_price
    if arrival is not None and average is not None and filled:
        out.arrival_slippage = money(-sign * (average - arrival) * filled)
        out.arrival_slippage_bps = bps(out.arrival_slippage, filled * arrival)
    if decision is not None:
        mark = mark if mark is not None else (average if average is not None else arrival)
        delay = money(-sign * ((arrival or decision) - decision) * filled)
        execution = out.arrival_slippage or Decimal(0)
        opportunity = money(-sign * ((mark or decision) - decision) * (quantity - filled))
        total = delay + execution - fees + opportunity
        out.shortfall = Shortfall(delay=delay, execution=execution, fees=-fees, opportunity=opportunity,
                                  total=total, total_bps=bps(total, quantity * decision))
    return out


def latency(snapshot: "OrderSnapshot", signal_at: datetime | None) -> LatencyStages:
    def first(states: frozenset[str], after: datetime | None = None) -> datetime | None:
        return next((t.at for t in snapshot.transitions
                     if t.state.value in states and (after is None or t.at >= after)), None)

    start = snapshot.created_at
    validated = first(frozenset({"validated"}))
    sent = first(frozenset({"submitted"}))
    ack = first(VENUE_ANSWER_STATES, sent) if sent else None
    fill = first(FILL_STATES)
    terminal = first(TERMINAL)
    return LatencyStages(
        signal_to_start_ms=ms_between(signal_at, start), start_to_validated_ms=ms_between(start, validated),
        validated_to_sent_ms=ms_between(validated, sent), sent_to_ack_ms=ms_between(sent, ack),
        ack_to_first_fill_ms=ms_between(ack, fill), first_fill_to_terminal_ms=ms_between(fill, terminal),
        execution_ms=ms_between(sent, terminal), total_ms=ms_between(start, terminal))


def order_tca(snapshot: "OrderSnapshot", inputs: OrderTCA, mark: Decimal | None = None) -> OrderTCA:
    """The order's TCA from its snapshot and the pre-trade inputs (`inputs`, from pre_trade)."""
    out = costs(inputs, snapshot.side.value, snapshot.quantity, snapshot.filled_quantity,
                snapshot.average_fill_price, snapshot.fees, mark)
    out.latency = latency(snapshot, inputs.signal_at)
    return out


# --- parents: children aggregated, and benchmarks over the interval ---------------------------------
class MarketPoint(BaseModel):
    """One observation of the market path: a price (a 1-minute close, a trade) and its volume."""

    at: datetime
    price: Decimal
    volume: Decimal = Decimal(0)


class Benchmarks(BaseModel):
    twap: Decimal | None = None  # arithmetic mean of the path's prices in the interval (regular samples)
    vwap: Decimal | None = None  # sum(price * volume) / sum(volume) in the interval
    slippage_vs_twap_bps: Decimal | None = None  # P&L-signed: negative = paid worse than the benchmark
    slippage_vs_vwap_bps: Decimal | None = None


class ParentTCA(BaseModel):
    order: OrderTCA
    children: int
    benchmarks: Benchmarks


def interval_benchmarks(side: str, average: Decimal | None, path: list[MarketPoint], start: datetime,
                        end: datetime) -> Benchmarks:
    inside = [p for p in path if start <= p.at <= end]
    out = Benchmarks()
    if inside:
        out.twap = sum((p.price for p in inside), Decimal(0)) / len(inside)
        volume = sum((p.volume for p in inside), Decimal(0))
        out.vwap = sum((p.price * p.volume for p in inside), Decimal(0)) / volume if volume else None
    sign = side_sign(side)
    for name in ("twap", "vwap"):
        bench = getattr(out, name)
        if bench is not None and average is not None:
            setattr(out, f"slippage_vs_{name}_bps", bps(-sign * (average - bench), bench))
    return out


def parent_tca(parent: "OrderSnapshot", children: list["OrderSnapshot"], path: list[MarketPoint] | None = None,
               mark: Decimal | None = None) -> ParentTCA:
    """A parent's TCA from its children's fills; its arrival is its own (else its first child's)."""
    filled = sum((c.filled_quantity for c in children), Decimal(0))
    value = sum((c.filled_quantity * c.average_fill_price for c in children if c.average_fill_price is not None),
                Decimal(0))
    fees = sum((c.fees for c in children), Decimal(0))
    average = value / filled if filled else None
    first_child = min(children, key=lambda c: c.created_at) if children else None
    inputs = parent.tca or pre_trade(parent.symbol, parent.reference_price, None, None, None, None, None)
    if inputs.arrival_price is None and first_child is not None and first_child.tca is not None:
        inputs = inputs.model_copy(update={"arrival_price": first_child.tca.arrival_price})
    out = costs(inputs, parent.side.value, parent.quantity, filled, average, fees, mark)
    out.latency = latency(parent, inputs.signal_at)
    end = next((t.at for t in parent.transitions if t.state.value in TERMINAL), None) or max(
        [c.updated_at for c in children] or [parent.updated_at])
    bench = interval_benchmarks(parent.side.value, average, path or [], parent.created_at, end)
    return ParentTCA(order=out, children=len(children), benchmarks=bench)
