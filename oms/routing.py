"""Smart order routing: where an order goes, decided from the venues' books and fees (pure).

The router walks each eligible venue's book for the order's quantity, adds that venue's taker fee
for the account, and picks the cheapest all-in venue, or splits across venues where the split is
cheaper than the best single venue or no single venue's depth within the price collar can fill it.
A split that does not beat the best single venue is not taken (DESIGN.md section 5).

This module holds the data the router takes and gives (shared by the routing activity, the order
and parent workflows and the benchmark); the decision itself is a pure function beside them.
"""
from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from oms.models import Side
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
