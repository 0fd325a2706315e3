"""Order splitting: one quantity into child quantities a venue accepts (pure).

Every answer is a list of lot-size multiples that sums exactly to the total, each child at or above
the venue's minimum amount and notional where the total allows it. Two ways to ask:

    split_quantity(total, market, parts=n)                  # n children, as equal as the lot allows
    split_quantity(total, market, max_quantity=q)           # as few children as keep each <= q
    split_quantity(total, market, max_notional=v, price=p)  # ... each worth <= v at price p
    (max_quantity and max_notional together: both caps hold)

`parts` that would put a child below the lot size or the venue's minimum gives fewer, larger
children (never a child the venue refuses: nautilus #1442); callers compare len(result) with what
they asked for and state the merge on the order. A cap below the venue's minimum cannot be met:
`SliceError` says why, and the caller refuses the order with that reason. A total that is not a
lot multiple is refused too (a caller rounds it first; the router never produces one).

Sizes are spread evenly: the remainder lots go one each to the first children, so no child is more
than one lot larger than another (a TWAP's slices stay alike; the last slice is not a dustbin).
Callers: the router (`oms/routing.py`, per-venue child caps), parent orders (TWAP slices, iceberg
display quantities). `child_caps` reads the configured caps for a symbol and venue.
"""
from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from oms.venue import MarketInfo


class SliceError(ValueError):
    """The quantity cannot be split as asked; the message is the reason to give the order."""


def _units(value: Decimal, step: Decimal, rounding: str = ROUND_FLOOR) -> int:
    return int((value / step).to_integral_value(rounding=rounding))


def min_lots(market: MarketInfo, price: Decimal | None) -> int:
    """The fewest lots one child may hold on this venue (minimum amount; minimum notional at `price`)."""
    step = market.amount_step
    lots = max(1, _units(market.min_amount, step, ROUND_CEILING))
    if price is not None and price > 0 and market.min_notional > 0:
        lots = max(lots, _units(market.min_notional / price, step, ROUND_CEILING))
    return lots


def _even(units: int, parts: int, step: Decimal) -> list[Decimal]:
    base, extra = divmod(units, parts)
    return [step * (base + 1 if i < extra else base) for i in range(parts)]


def split_quantity(total: Decimal, market: MarketInfo, *, parts: int | None = None,
                   max_quantity: Decimal | None = None, max_notional: Decimal | None = None,
                   price: Decimal | None = None) -> list[Decimal]:
    """Child quantities (see the module header). `price` values a child for the minimum notional
    and for `max_notional`; without it only the minimum amount is checked."""
    step = market.amount_step
    if step <= 0:
        raise SliceError(f"{market.symbol}: the venue gives no lot size")
    if total <= 0:
        raise SliceError(f"quantity {total} must be positive")
    if total % step != 0:
        raise SliceError(f"quantity {total} is not a multiple of the lot size {step}")
    if parts is not None and parts < 1:
        raise SliceError(f"parts must be at least 1, not {parts}")
    units, floor_lots = _units(total, step), min_lots(market, price)
    caps = []
    if max_quantity is not None:
        caps.append(_units(max_quantity, step))
    if max_notional is not None:
        if price is None or price <= 0:
            raise SliceError("max_notional needs a price to value the children")
        caps.append(_units(max_notional / price, step))
    if caps:
        cap = min(caps)
        if cap < floor_lots:
            raise SliceError(f"child cap of {step * cap} on {market.symbol} is below the venue minimum of "
                             f"{step * floor_lots} per order")
        count = max(parts or 1, -(-units // cap))
    else:
        count = parts or 1
    if units < floor_lots:
        return [total]  # below the venue minimum whole: one order, which validation refuses with its reason
    count = min(count, units // floor_lots)  # fewer, larger children rather than one below the minimum
    if caps and -(-units // count) > cap:
        raise SliceError(f"{total} on {market.symbol} cannot be cut into children between the venue minimum "
                         f"{step * floor_lots} and the cap {step * cap}")
    return _even(units, count, step)


def child_caps(caps: dict[str, Decimal], symbol: str, exchange: str) -> Decimal | None:
    """The configured cap for an order of `symbol` on `exchange`: the tighter of the per-symbol and
    the per-venue entry (`execution.max_child_quantity` / `max_child_notional`), or None."""
    found = [v for k, v in caps.items() if k in (symbol, exchange)]
    return min(found) if found else None
