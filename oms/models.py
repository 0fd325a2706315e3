"""Typed domain models shared by the consumer, the API, the workflow and the activities.

Quantities and prices are `Decimal` (exact; serialized as strings in JSON, as exchanges do), so
partial fills add up to the order quantity without float drift.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from oms.tca import OrderTCA

SIGNAL_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
CLIENT_ORDER_ID_MAX = 36
_CLIENT_ID_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")

PositiveDecimal = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
NonNegativeDecimal = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]

# Bounds of what a caller may ask for (signals, amends). The database keeps amounts as
# DECIMAL(38, 12): 26 integer digits and 12 decimals, so a quantity times a price (< 1e24) still fits;
# no venue lists an instrument whose lot or price comes near 1e12.
MAX_AMOUNT = Decimal("1e12")
MAX_SCALE = 12
MAX_REASON_LENGTH = 500
# A decimal as JSON or pydantic writes it: ASCII digits, optional fraction, optional exponent (which
# pydantic itself emits for small values, e.g. 1E-7). No plus sign, spaces, underscores or other
# digits. A minus sign and the non-finite words pass here to be refused by the bounds with their own reason.
_PLAIN_DECIMAL = re.compile(r"-?((0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]{1,4})?|(?i:s?nan|inf|infinity))", re.ASCII)


def _plain_decimal(value: object) -> object:
    """Refuse the spellings Python's Decimal accepts but no exchange or person means ("1_0", "+1", " 1")."""
    if isinstance(value, bool):
        raise ValueError("must be a decimal number")
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise ValueError("must be a plain decimal number such as \"0.05\" (no plus sign, spaces or underscores)")
    return value


def _bounded_scale(value: Decimal) -> Decimal:
    if value >= MAX_AMOUNT:
        raise ValueError("not a plausible value: must be below 10^12")
    if value != value.quantize(Decimal(1).scaleb(-MAX_SCALE)):
        raise ValueError(f"at most {MAX_SCALE} decimal places")
    return value


# A quantity or price a caller asks for: finite, positive, below MAX_AMOUNT, at most MAX_SCALE decimals.
# (The bound is checked before the scale: quantizing a huge value would overflow the context.)
Amount = Annotated[Decimal, BeforeValidator(_plain_decimal), Field(gt=0, allow_inf_nan=False),
                   AfterValidator(_bounded_scale)]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


class TimeInForce(StrEnum):
    GTC = "GTC"  # good till cancelled
    IOC = "IOC"  # immediate or cancel: fill what you can now, cancel the rest
    FOK = "FOK"  # fill or kill: all now or nothing
    GTD = "GTD"  # good till date: expires at expire_at


class Intent(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


class ExecutionAlgo(StrEnum):
    TWAP = "twap"
    ICEBERG = "iceberg"


class OrderState(StrEnum):
    CREATED = "created"
    VALIDATED = "validated"
    DENIED = "denied"  # our validation refused it
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    CANCELLED = "cancelled"
    PENDING_AMEND = "pending_amend"
    REJECTED = "rejected"  # the venue refused it
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # outcome of a venue call not known: reconcile, never resubmit blindly
    FAILED = "failed"


TERMINAL_STATES = frozenset(
    {
        OrderState.FILLED,
        OrderState.CANCELLED,
        OrderState.DENIED,
        OrderState.REJECTED,
        OrderState.EXPIRED,
        OrderState.FAILED,
    }
)


_FILLABLE_STATES = frozenset(
    {
        OrderState.SUBMITTED,
        OrderState.ACCEPTED,
        OrderState.PARTIALLY_FILLED,
        OrderState.PENDING_CANCEL,
        OrderState.PENDING_AMEND,
        OrderState.UNKNOWN,
    }
)


class ExecutionTiming(BaseModel):
    """When and how to work the order (the brief's 'configurable execution timing')."""

    model_config = ConfigDict(extra="forbid")

    start_at: datetime | None = None
    algo: ExecutionAlgo | None = None
    duration_s: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] | None = None
    slices: Annotated[int, Field(ge=1, le=1000)] | None = None


class Signal(BaseModel):
    """A trading signal as strategies emit it (DESIGN.md section 3)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    signal_id: Annotated[str, Field(pattern=SIGNAL_ID_PATTERN)]
    strategy_id: Annotated[str, Field(min_length=1, max_length=64)]
    symbol: Annotated[str, Field(pattern=r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")]
    side: Side
    quantity: Amount
    order_type: OrderType | None = None
    limit_price: Amount | None = None
    time_in_force: TimeInForce | None = None
    expire_at: datetime | None = None
    exchange: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    reference_price: Amount | None = None
    intent: Intent = Intent.ENTRY
    execution: ExecutionTiming | None = None
    created_at: datetime | None = None

    @field_validator("expire_at", "created_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Signal":
        if self.order_type == OrderType.LIMIT and self.limit_price is None:
            raise ValueError("limit_price is required for a limit order")
        if self.order_type == OrderType.MARKET and self.limit_price is not None:
            raise ValueError("limit_price is not allowed on a market order")
        if self.time_in_force == TimeInForce.GTD and self.expire_at is None:
            raise ValueError("expire_at is required for time_in_force GTD")
        if self.expire_at is not None and self.time_in_force not in (None, TimeInForce.GTD):
            raise ValueError("expire_at only applies to time_in_force GTD")
        return self

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.signal_id)


def workflow_id_for(signal_id: str) -> str:
    return f"order-{signal_id}"


def client_order_id_for(workflow_id: str, generation: int = 0) -> str:
    """The exchange client order id: deterministic, at most 36 chars of [A-Za-z0-9_-].

    Derived from the workflow id so a retried submit finds the order it may already have placed.
    `generation` distinguishes the replacement order of a cancel-and-replace amend.
    Long or unusual ids are shortened with a stable hash so two signals never share an id.
    """
    import hashlib

    suffix = f"-r{generation}" if generation else ""
    base = _CLIENT_ID_ALLOWED.sub("_", workflow_id)
    if len(base) + len(suffix) <= CLIENT_ORDER_ID_MAX and base == workflow_id:
        return base + suffix
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:12]
    keep = CLIENT_ORDER_ID_MAX - len(suffix) - len(digest) - 1
    return f"{base[:keep]}_{digest}{suffix}"


class Transition(BaseModel):
    state: OrderState
    at: datetime
    reason: str | None = None


class Fill(BaseModel):
    """One execution, as position management receives it on the `executions` stream."""

    fill_id: str  # unique: <client_order_id>:<venue trade id>
    order_id: str
    strategy_id: str
    symbol: str
    side: Side
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: Annotated[Decimal, Field(allow_inf_nan=False)] = Decimal(0)  # negative: a maker rebate
    fee_currency: str | None = None
    liquidity: str | None = None  # maker | taker
    venue: str
    at: datetime


# The snapshot lists at most this many fills (the latest): it travels in every event, query answer
# and continue-as-new input, so it must stay small whatever the order's life; `fill_count` counts all.
SNAPSHOT_FILLS_MAX = 50


class FillRecord(BaseModel):
    """One execution as the order's snapshot lists it (the `executions` stream has the full Fill)."""

    trade_id: str  # the venue's trade id
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: Annotated[Decimal, Field(allow_inf_nan=False)] = Decimal(0)
    fee_currency: str | None = None
    liquidity: str | None = None
    at: datetime


class OrderSnapshot(BaseModel):
    """The order as the `status` query, the API and the cache show it (DESIGN.md section 3)."""

    order_id: str
    signal_id: str
    strategy_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    quantity: PositiveDecimal
    limit_price: PositiveDecimal | None = None
    state: OrderState = OrderState.CREATED
    filled_quantity: NonNegativeDecimal = Decimal(0)
    average_fill_price: Decimal | None = None
    fees: Annotated[Decimal, Field(allow_inf_nan=False)] = Decimal(0)  # quote currency; rebates negative
    exchange: str
    reference_price: Decimal | None = None
    slippage_bps: Decimal | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    transitions: list[Transition] = Field(default_factory=list)
    # Beyond the contract's fields: useful to operators and position management.
    venue_order_id: str | None = None
    expire_at: datetime | None = None
    intent: Intent = Intent.ENTRY
    # Fees charged in a third asset (a BNB discount): per currency, never added to `fees`.
    other_fees: dict[str, Decimal] = Field(default_factory=dict)
    # Outcomes the transition table did not foresee (oms.states.record_unforeseen): how many, the last.
    anomalies: int = 0
    last_anomaly: str | None = None
    venue_requests: int = 0  # venue calls made for this order (every retry and look-up counts)
    # Why this venue: the router's reason and what it weighed (oms/routing.py RoutePlan), one line.
    routing_reason: str | None = None
    # Transaction cost analysis (oms/tca.py): decision and arrival prices, the pre-trade estimate, and
    # the realized costs and latency stages, kept current on every publish. None before preparation.
    tca: OrderTCA | None = None
    fills: list[FillRecord] = Field(default_factory=list)  # the latest SNAPSHOT_FILLS_MAX, oldest first
    fill_count: int = 0  # every fill counted, listed or not

    def record_fill(self, record: FillRecord) -> None:
        """List a counted fill, keeping only the latest SNAPSHOT_FILLS_MAX."""
        self.fills.append(record)
        self.fill_count += 1
        del self.fills[:-SNAPSHOT_FILLS_MAX]

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def state_allows_fill(self) -> bool:
        return self.state in _FILLABLE_STATES

    @property
    def remaining_quantity(self) -> Decimal:
        return max(self.quantity - self.filled_quantity, Decimal(0))


class CancelRequest(BaseModel):
    """Argument of the `cancel` signal and the `cancel_order` update."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=MAX_REASON_LENGTH)] | None = None


class AmendRequest(BaseModel):
    """Argument of the `amend` signal and the `amend_order` update; either field may be omitted."""

    model_config = ConfigDict(extra="forbid")

    quantity: Amount | None = None
    limit_price: Amount | None = None

    @model_validator(mode="after")
    def _something(self) -> "AmendRequest":
        if self.quantity is None and self.limit_price is None:
            raise ValueError("amend needs quantity or limit_price")
        return self
