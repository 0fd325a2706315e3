"""Venue status tables: every raw status a venue can return, mapped to the order model.

Each adapter owns one table (raw venue status -> `StatusRule`), kept as data beside the adapter and
tested row by row. `resolve` turns a rule and the fills the answer carries into a
`VenueOrderStatus`, the same way for every venue:

- OPEN: still working at the venue; NEW without fills, PARTIALLY_FILLED with some.
- FILLED: complete. A venue's "closed" is never read as filled (Bybit's PartiallyFilledCanceled is
  `closed` in ccxt): only a raw status that means filled maps here, and only with the fills to match.
- CANCELLED / EXPIRED: ended with whatever filled; the fills come with the report.
- REJECTED: refused. A refusal after fills (a late QuantConnect `Invalid`) ended an order that
  traded, so it is CANCELLED with those fills, never a rejection that loses them.
A raw status the table lacks is UNRECOGNIZED, logged with its raw value, never guessed.
"""
from __future__ import annotations

import logging
from decimal import Decimal
from enum import StrEnum

from oms.venue import VenueOrderStatus

log = logging.getLogger("tom.venue.status")


class StatusRule(StrEnum):
    OPEN = "open"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


_TERMINAL = {StatusRule.FILLED: VenueOrderStatus.FILLED, StatusRule.CANCELLED: VenueOrderStatus.CANCELLED,
             StatusRule.EXPIRED: VenueOrderStatus.EXPIRED}


def resolve(table: dict[str, StatusRule], venue: str, raw: str | None, filled: Decimal,
            quantity: Decimal | None = None) -> tuple[VenueOrderStatus, str | None]:
    """(status, reason) of one venue answer; reason is set where the mapping needs saying.
    `quantity`, where known, guards FILLED: a "filled" whose fills fall short is not believed."""
    rule = table.get(raw) if raw is not None else None
    if rule is None:
        log.warning("%s: unrecognized venue order status %r", venue, raw)
        return VenueOrderStatus.UNRECOGNIZED, f"unrecognized {venue} order status {raw!r}"
    if rule == StatusRule.FILLED and quantity and filled < quantity:
        log.warning("%s: status %r with %s of %s filled", venue, raw, filled, quantity)
        return VenueOrderStatus.UNRECOGNIZED, f"{venue} says {raw!r} but reports {filled} of {quantity} filled"
    if rule == StatusRule.OPEN:
        return (VenueOrderStatus.PARTIALLY_FILLED if filled > 0 else VenueOrderStatus.NEW), None
    if rule == StatusRule.REJECTED:
        if filled > 0:
            return VenueOrderStatus.CANCELLED, f"{venue} ended the order ({raw}) after fills"
        return VenueOrderStatus.REJECTED, None
    return _TERMINAL[rule], None
