"""Execution algorithms (twap, iceberg): their parameters checked and their slices planned (pure).

`plan_algo` turns a signal's `execution` block into an `AlgoPlan` or a `Denial` that says which
parameter cannot be honoured. Slices are lot-size multiples that sum exactly to the quantity, and
none is smaller than the venue accepts (lot size, `min_amount`, `min_notional` at the order's price):
asked for more slices than that allows, the plan sends fewer, larger ones and says so on the order
(nautilus #1442 sent slices the venue refused). What each slice really sends is decided when it goes
out (`twap_slice_quantity`), from what is left to work then: quantity a refused or cancelled child
gave back, or an amend, is carried into the next slice.
"""
from __future__ import annotations

import math
from datetime import datetime
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

from pydantic import BaseModel, Field

from oms.models import ExecutionAlgo, OrderType, Signal, TimeInForce
from oms.validation import Denial, DenialReason
from oms.venue import MarketInfo

MIN_SLICE_SPACING_S = 1  # TWAP slices at least this far apart: a durable timer each
NOTIONAL_MARGIN = Decimal("1.05")  # a slice stays above min_notional if the price moves 5 % against it


class RandomSource(Protocol):
    def random(self) -> float: ...


class AlgoPlan(BaseModel):
    algo: ExecutionAlgo
    min_child_quantity: Decimal
    slice_quantities: list[Decimal] = Field(default_factory=list)  # twap: planned, summing to the quantity
    slice_offsets_ms: list[int] = Field(default_factory=list)  # twap: after the start
    display_quantity: Decimal | None = None  # iceberg
    note: str | None = None  # what the plan changed from the request (merged slices)


def _invalid(message: str) -> Denial:
    return Denial(reason=DenialReason.INVALID_ALGO_PARAMETERS, message=message)


def _unsupported(message: str) -> Denial:
    return Denial(reason=DenialReason.ALGO_NOT_SUPPORTED, message=message)


def min_child_quantity(market: MarketInfo, price: Decimal | None) -> Decimal:
    """The smallest quantity a child may carry on this venue: a lot multiple, at least min_amount,
    and worth at least min_notional (with a margin) at `price`."""
    step = market.amount_step if market.amount_step > 0 else Decimal("1e-12")
    need = max(step, market.min_amount)
    if market.min_notional > 0 and price is not None and price > 0:
        need = max(need, market.min_notional * NOTIONAL_MARGIN / price)
    return (need / step).to_integral_value(rounding=ROUND_CEILING) * step


def plan_algo(signal: Signal, market: MarketInfo, price: Decimal | None, rng: RandomSource,
              start: datetime | None = None) -> AlgoPlan | Denial:
    """The plan for `signal.execution`, or why it cannot be honoured. `price`: the limit price, else
    the venue's mid (for min_notional); `rng`: workflow.random() (durable: replays the same plan)."""
    execution = signal.execution
    assert execution is not None and execution.algo is not None
    if signal.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
        return _invalid(f"time_in_force {signal.time_in_force.value} cannot apply to an order worked over time "
                        f"by {execution.algo.value}")
    minimum = min_child_quantity(market, price)
    if execution.algo == ExecutionAlgo.TWAP:
        return _plan_twap(signal, market, minimum, rng, start)
    return _plan_iceberg(signal, market, minimum)


def _plan_twap(signal: Signal, market: MarketInfo, minimum: Decimal, rng: RandomSource,
               start: datetime | None) -> AlgoPlan | Denial:
    execution = signal.execution
    if execution.display_quantity is not None:
        return _unsupported("display_quantity applies to iceberg, not twap")
    if execution.duration_s is None or execution.slices is None:
        return _invalid("twap needs duration_s and slices")
    if signal.expire_at is not None and start is not None \
            and (signal.expire_at - start).total_seconds() < execution.duration_s:
        return _invalid(f"expire_at {signal.expire_at.isoformat()} falls before the twap's end "
                        f"({execution.duration_s} s after its start)")
    notes = []
    slices = execution.slices
    by_size = int(signal.quantity / minimum)
    if by_size < 1:
        return _invalid(f"quantity {signal.quantity} is below the smallest slice the venue accepts ({minimum})")
    if slices > by_size:
        notes.append(f"{slices} slices asked, {by_size} sent: each at least {minimum} (venue lot and minimums)")
        slices = by_size
    by_time = max(execution.duration_s // MIN_SLICE_SPACING_S, 1)
    if slices > by_time:
        notes.append(f"{slices} slices asked, {by_time} sent: at least {MIN_SLICE_SPACING_S} s apart")
        slices = by_time
    pct = float(execution.randomize_pct or 0) / 100
    quantities = _split(signal.quantity, slices, market.amount_step, minimum, pct, rng)
    spacing_ms = execution.duration_s * 1000 / slices
    offsets = [0]
    for i in range(1, slices):  # each slice within +-pct/2 of its spacing: the order of slices holds
        jitter = (rng.random() - 0.5) * pct * spacing_ms if pct else 0.0
        offsets.append(int(i * spacing_ms + jitter))
    return AlgoPlan(algo=ExecutionAlgo.TWAP, min_child_quantity=minimum, slice_quantities=quantities,
                    slice_offsets_ms=offsets, note="; ".join(notes) or None)


def _split(quantity: Decimal, count: int, step: Decimal, minimum: Decimal, pct: float,
           rng: RandomSource) -> list[Decimal]:
    """`count` lot multiples summing exactly to `quantity`, none below `minimum`; sizes spread by up
    to +-pct where that keeps every slice at or above the minimum."""
    step = step if step > 0 else Decimal("1e-12")
    units = int(quantity / step)
    min_units = int((minimum / step).to_integral_value(rounding=ROUND_CEILING))
    even = [units // count + (1 if i < units % count else 0) for i in range(count)]
    if pct:
        weights = [1 + (rng.random() * 2 - 1) * pct for _ in range(count)]
        total = sum(weights)
        spread = [math.floor(units * w / total) for w in weights]
        for i in range(units - sum(spread)):
            spread[i % count] += 1
        if min(spread) >= min_units:
            even = spread
    leftover = quantity - step * units  # a quantity off the lot grid: validation refuses it; kept exact
    result = [step * u for u in even]
    result[-1] += leftover
    return result


def _plan_iceberg(signal: Signal, market: MarketInfo, minimum: Decimal) -> AlgoPlan | Denial:
    execution = signal.execution
    asked = [name for name in ("slices", "duration_s", "randomize_pct") if getattr(execution, name) is not None]
    if asked:
        return _unsupported(f"{', '.join(asked)} apply to twap, not iceberg (iceberg takes display_quantity)")
    if signal.limit_price is None or signal.order_type == OrderType.MARKET:
        return _invalid("iceberg needs a limit price")
    display = execution.display_quantity
    if display is None:
        return _invalid("iceberg needs display_quantity")
    step = market.amount_step
    if step > 0 and display / step != (display / step).to_integral_value():
        return _invalid(f"display_quantity {display} is not a multiple of the lot size {step}")
    if display < minimum:
        return _invalid(f"display_quantity {display} is below the smallest order the venue accepts ({minimum})")
    return AlgoPlan(algo=ExecutionAlgo.ICEBERG, min_child_quantity=minimum, display_quantity=display)


def twap_slice_quantity(index: int, planned: list[Decimal], left: Decimal, step: Decimal,
                        minimum: Decimal) -> Decimal:
    """What slice `index` sends, given `left` (quantity no child holds). Quantity given back by
    earlier children, or added by an amend, is carried into this slice; an amend that lowered the
    quantity shrinks the remaining slices in proportion. The last slice takes all that is left.
    Zero: nothing placeable now (below the venue's minimum), carried into the next."""
    if left <= 0:
        return Decimal(0)
    rest = sum(planned[index:], Decimal(0))
    if index >= len(planned) - 1:
        quantity = left
    elif left >= rest:
        quantity = planned[index] + (left - rest)
    else:
        unit = step if step > 0 else Decimal("1e-12")
        quantity = (left * planned[index] / rest / unit).to_integral_value(rounding="ROUND_FLOOR") * unit
    if left - quantity < minimum:  # a remainder no child could carry: send it now
        quantity = left
    return quantity if quantity >= minimum else Decimal(0)
