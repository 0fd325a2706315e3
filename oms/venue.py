"""The venue contract every execution adapter speaks (simulation, ccxt direct, QuantConnect).

Workflows only see these typed models; adapters in `activities/` translate them to a venue's API.
Errors cross the activity boundary as `ApplicationError` with one of the `VenueErrorType` types, so
the workflow's retry policy can tell a rejection (never retried) from a transient failure (retried
with backoff) from an unknown outcome (reconciled by looking the order up, never resubmitted).
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field

from oms.models import NonNegativeDecimal, OrderType, PositiveDecimal, Side, TimeInForce


class VenueErrorType(StrEnum):
    REJECTED = "VenueRejected"  # the venue refused the order: terminal, never retried
    TRANSIENT = "VenueTransient"  # nothing happened at the venue (refused connection, 5xx before send): retry
    UNKNOWN_OUTCOME = "VenueUnknownOutcome"  # sent, answer lost or timed out: reconcile
    RATE_LIMITED = "VenueRateLimited"  # 429/418: the venue is paused for everyone; retry after the pause
    CIRCUIT_OPEN = "VenueCircuitOpen"  # our breaker is open for this venue: wait or reroute
    NOT_FOUND = "VenueOrderNotFound"  # the venue does not know this client order id
    UNSUPPORTED = "VenueUnsupported"  # e.g. native amend on a venue without one


class VenueOrderStatus(StrEnum):
    NEW = "new"  # accepted, resting
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"  # IOC/FOK remainder, GTD reached on the venue
    NOT_FOUND = "not_found"  # the venue never received it (reconciliation answer)
    # A status no adapter table knows (a new venue status, a malformed answer): never guessed; the
    # report's `reason` carries the raw status and the workflow reconciles it as unknown.
    UNRECOGNIZED = "unrecognized"


# Still working at the venue: it can fill, be cancelled or amended.
OPEN_STATUSES = frozenset({VenueOrderStatus.NEW, VenueOrderStatus.PARTIALLY_FILLED})


class MarketInfo(BaseModel):
    """Exchange constraints of one symbol (from ccxt markets or the simulated venue)."""

    symbol: str
    base: str
    quote: str
    amount_step: Decimal  # lot size
    price_step: Decimal  # tick size
    min_amount: Decimal = Decimal(0)
    min_notional: Decimal = Decimal(0)
    active: bool = True
    maker_fee: Decimal = Decimal("0.001")
    taker_fee: Decimal = Decimal("0.001")


class MarketQuote(BaseModel):
    """A market's constraints with its current top of book (what validation and estimates need)."""

    market: MarketInfo
    bid: Decimal
    ask: Decimal
    at: datetime

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


class MarketQuery(BaseModel):
    exchange: str
    account: str = "default"
    symbol: str


class VenueOrderRequest(BaseModel):
    exchange: str
    account: str = "default"
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: PositiveDecimal
    limit_price: PositiveDecimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC


class VenueOrderRef(BaseModel):
    """Identifies an order at a venue, for fetch / cancel / reconcile."""

    exchange: str
    account: str = "default"
    client_order_id: str
    symbol: str


class VenueAmendRequest(VenueOrderRef):
    quantity: PositiveDecimal | None = None  # new total quantity
    limit_price: PositiveDecimal | None = None


class VenueFill(BaseModel):
    trade_id: str  # unique per venue order; fills are counted once per trade_id
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: Decimal = Field(default=Decimal(0), allow_inf_nan=False)  # as the venue reports it; negative: a rebate
    fee_currency: str | None = None
    liquidity: str | None = None  # maker | taker
    at: datetime


class VenueOrderReport(BaseModel):
    """What the venue says about one order, complete: every fill so far is listed."""

    exchange: str
    client_order_id: str
    venue_order_id: str | None = None
    symbol: str
    status: VenueOrderStatus
    quantity: Decimal | None = None
    limit_price: Decimal | None = None
    filled_quantity: NonNegativeDecimal = Decimal(0)
    fills: list[VenueFill] = Field(default_factory=list)
    # False when the venue listed the order without its trades (a batched open-orders call): the
    # fills above are then not all of them, and a workflow that sees more filled fetches the order.
    fills_complete: bool = True
    reason: str | None = None
    at: datetime | None = None
