"""The QuantConnect venue: orders go to a LIVE QuantConnect algorithm through the REST API v2.

What the QuantConnect documentation (Cloud Platform > API Reference) and Lean's sources say, and
this adapter relies on:
- Every call is a POST with a JSON body to https://www.quantconnect.com/api/v2/<endpoint>.
- Authentication: HTTP Basic with the user id and sha256("<api token>:<unix timestamp>") as the
  password, plus a `Timestamp` header with that timestamp (API Reference > Authentication). A 401
  means "key is missing, invalid, or timestamp is too old for hash" (Lean: older than 7200 s).
- Every answer is the envelope {"success": bool, "errors": [str]}.
- POST /live/commands/create {"projectId", "command"} runs a command in the project's live
  algorithm. The documented order command: {"$type": "OrderCommand", "symbol": {"id": "BTCUSD 2XR",
  "value": "BTCUSD"}, "order_type": "market", "quantity": "0.1", "limit_price": 0, "stop_price": 0,
  "tag": ""}; quantity is directional (Lean OrderCommand: negative sells). The answer only says
  whether the command was accepted: no order id, no fills.
- POST /live/orders/read {"projectId", "start", "end"} ("end - start must be less than 100") lists
  the live orders, each Lean's Order (id, symbol, quantity, type, status, tag, ...) with its
  `events` (fillQuantity, fillPrice, orderFeeAmount): Lean's ApiOrderResponse.

Where the documentation is silent, the conservative choice, written down:
- Our client order id travels as the order tag `tom:<client_order_id>`. Commands return no order
  id, so the tag is the only handle: submit looks the tag up before sending, and cancel/amend
  find the Lean order id through it.
- The orders listing lags the algorithm (QuantConnect's own API tests wait minutes for it). An
  order command accepted within `listing_grace_s` whose order is not listed yet is *pending*:
  submit does not resend it, fetch reports it NEW (never NOT_FOUND), cancel/amend report an unknown
  outcome. The record of sent commands is per process unless a Redis client is given
  (`build_quantconnect_adapter(settings, redis)`), then it is shared by all workers.
- Cancel and native amend use Lean's CancelOrderCommand {order_id} and UpdateOrderCommand
  {order_id, quantity, limit_price} in the documented OrderCommand's `$type` + snake_case form.
  Their effect is confirmed by watching the listing; unconfirmed in time = UNKNOWN_OUTCOME.
- OrderCommand carries no time in force: GTC orders map directly; IOC (our price-collared market
  orders) is a limit order whose remainder is cancelled as soon as the order is seen open, reported
  EXPIRED; FOK cannot be emulated and is rejected.
- Rate limits are not documented: HTTP 429 is RATE_LIMITED (Retry-After, default 5 s), assumed to
  have run nothing. A 5xx or a lost answer to a command may have run it: UNKNOWN_OUTCOME. A failed
  read changed nothing: TRANSIENT.
- The API has no symbol-properties or quote endpoint: `market()` returns permissive constraints
  (the algorithm's brokerage model enforces lot and tick sizes, marking violations Invalid, which
  we report as rejected) and there is no `quote()`: market orders need the signal's
  reference_price. Symbols are crypto pairs on `execution.quantconnect.market`.
- Secrets: the token is never sent nor logged; error text from the API is scrubbed of it and of
  any SHA-256 hex digest before it reaches a message.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Protocol

import aiohttp
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from activities.venues import VenueError
from config.settings import ConfigError, QuantConnectSettings, Settings
from oms.models import OrderType, Side, TimeInForce
from oms.venue import (
    MarketInfo,
    VenueAmendRequest,
    VenueErrorType,
    VenueFill,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
    VenueOrderStatus,
)
from oms.venue_status import StatusRule, resolve

log = logging.getLogger("tom.venue.quantconnect")

TAG_PREFIX = "tom:"
IOC_SUFFIX = "|IOC"
PAGE = 99  # orders per /live/orders/read call: the docs require end - start < 100
RATE_LIMIT_PAUSE_S = 5.0  # when a 429 carries no Retry-After
IOC_CANCEL_RESEND_S = 10.0
# Lean: SecurityType.Crypto and the market codes of Common/Market.cs; a symbol id is
# "<TICKER> <base36(market_code * 100 + security_type)>", e.g. "BTCUSD 2XR" on coinbase.
CRYPTO_SECURITY_TYPE = 7
LEAN_MARKET_CODES = {"bitfinex": 5, "kraken": 13, "binance": 16, "binanceus": 36, "bybit": 37, "coinbase": 38}
# Lean OrderStatus values (Common/Orders/OrderTypes.cs), normalised to lower-case names.
LEAN_STATUS = {0: "new", 1: "submitted", 2: "partiallyfilled", 3: "filled", 5: "canceled", 6: "none",
               7: "invalid", 8: "cancelpending", 9: "updatesubmitted"}
LEAN_CLOSED = {"filled", "canceled", "invalid"}
# Every Lean OrderStatus, mapped to the order model (see oms/venue_status.py). `none` is an order
# Lean holds before it is submitted; CancelPending and UpdateSubmitted still work at the brokerage.
_O, _F, _C, _R = StatusRule.OPEN, StatusRule.FILLED, StatusRule.CANCELLED, StatusRule.REJECTED
LEAN_STATUS_TABLE: dict[str, StatusRule] = {
    "new": _O, "submitted": _O, "partiallyfilled": _O, "none": _O, "cancelpending": _O, "updatesubmitted": _O,
    "filled": _F, "canceled": _C, "invalid": _R,
}
_SYMBOL = re.compile(r"^([A-Z0-9]{1,20})/([A-Z0-9]{1,20})$")
_HEX_DIGEST = re.compile(r"\b[0-9a-fA-F]{64}\b")
_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "USD", "EUR", "GBP", "BTC", "ETH")  # to split tickers back


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- authentication and identifiers ------------------------------------------------------------
def auth_headers(user_id: str, api_token: str, now: float) -> dict[str, str]:
    """The documented recipe: Basic user_id:sha256("<token>:<timestamp>"), plus the Timestamp."""
    stamp = str(int(now))
    digest = hashlib.sha256(f"{api_token}:{stamp}".encode()).hexdigest()
    basic = base64.b64encode(f"{user_id}:{digest}".encode()).decode("ascii")
    return {"Authorization": f"Basic {basic}", "Timestamp": stamp}


def _base36(value: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    while value:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
    return out or "0"


def lean_symbol(symbol: str, market: str) -> dict[str, str]:
    """Our `BASE/QUOTE` as the Lean Symbol {"id", "value"} of a crypto pair on `market`."""
    match = _SYMBOL.match(symbol)
    if match is None:
        raise VenueError(VenueErrorType.REJECTED, f"symbol {symbol!r} is not a BASE/QUOTE crypto pair")
    ticker = match.group(1) + match.group(2)
    properties = LEAN_MARKET_CODES[market] * 100 + CRYPTO_SECURITY_TYPE
    return {"id": f"{ticker} {_base36(properties)}", "value": ticker}


def _our_symbol(ticker: str) -> str:
    for quote in _QUOTES:
        if ticker.endswith(quote) and len(ticker) > len(quote):
            return f"{ticker[:-len(quote)]}/{quote}"
    return ticker


def order_tag(client_order_id: str, ioc: bool) -> str:
    return f"{TAG_PREFIX}{client_order_id}{IOC_SUFFIX if ioc else ''}"


def parse_tag(tag: str | None) -> tuple[str, bool] | None:
    """(client order id, ioc) of one of our tags; None for the algorithm's own orders."""
    if not tag or not tag.startswith(TAG_PREFIX):
        return None
    body = tag[len(TAG_PREFIX):]
    ioc = body.endswith(IOC_SUFFIX)
    return (body[:-len(IOC_SUFFIX)] if ioc else body), ioc


# --- wire models (answers; Lean serialises them camelCase, older docs show PascalCase) -----------
def _either(name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name, name[0].upper() + name[1:]))


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class QCEnvelope(_Wire):
    success: bool = Field(default=False, validation_alias=AliasChoices("success", "Success"))
    errors: list[str] = Field(default_factory=list, validation_alias=AliasChoices("errors", "Errors"))

    @field_validator("errors", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return value or []


class QCSymbol(_Wire):
    value: str | None = _either("value")
    id: str | None = Field(default=None, validation_alias=AliasChoices("id", "ID", "Id"))


class QCOrderEvent(_Wire):
    order_event_id: int = Field(validation_alias=AliasChoices("orderEventId", "OrderEventId"))
    time: float | None = _either("time")
    status: str | None = _either("status")
    fill_price: Decimal = Field(default=Decimal(0), validation_alias=AliasChoices("fillPrice", "FillPrice"))
    fill_quantity: Decimal = Field(default=Decimal(0), validation_alias=AliasChoices("fillQuantity", "FillQuantity"))
    order_fee_amount: Decimal | None = _either("orderFeeAmount")
    order_fee_currency: str | None = _either("orderFeeCurrency")
    message: str | None = _either("message")


class QCOrder(_Wire):
    id: int = Field(validation_alias=AliasChoices("id", "Id"))
    symbol: QCSymbol | None = _either("symbol")
    quantity: Decimal = Field(default=Decimal(0), validation_alias=AliasChoices("quantity", "Quantity"))
    type: int | str = Field(default=0, validation_alias=AliasChoices("type", "Type"))
    status: int | str = Field(default=0, validation_alias=AliasChoices("status", "Status"))
    tag: str | None = _either("tag")
    limit_price: Decimal | None = _either("limitPrice")
    events: list[QCOrderEvent] = Field(default_factory=list, validation_alias=AliasChoices("events", "Events"))

    @property
    def lean_status(self) -> str:
        if isinstance(self.status, int):
            return LEAN_STATUS.get(self.status, f"status {self.status}")  # unknown: not guessed
        return self.status.replace("_", "").lower()

    @property
    def is_limit(self) -> bool:
        return self.type in (1, "Limit", "limit")

    @property
    def closed(self) -> bool:
        return self.lean_status in LEAN_CLOSED


class QCOrdersPage(_Wire):
    orders: list[QCOrder] = Field(default_factory=list, validation_alias=AliasChoices("orders", "Orders"))
    length: int = Field(default=0, validation_alias=AliasChoices("length", "Length"))


# --- commands (requests), in the documented shape -------------------------------------------------
class _Command(BaseModel):
    def payload(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class OrderCommand(_Command):
    type_: str = Field(default="OrderCommand", serialization_alias="$type")
    symbol: dict[str, str]
    order_type: str  # "market" | "limit"
    quantity: str  # directional, as a decimal string like the documented example
    limit_price: float = 0
    stop_price: float = 0
    tag: str


class CancelOrderCommand(_Command):
    type_: str = Field(default="CancelOrderCommand", serialization_alias="$type")
    order_id: int


class UpdateOrderCommand(_Command):
    type_: str = Field(default="UpdateOrderCommand", serialization_alias="$type")
    order_id: int
    quantity: str | None = None  # new total, directional
    limit_price: float | None = None


# --- record of sent order commands (the listing lags) --------------------------------------------
class SentLedger(Protocol):
    async def claim(self, client_order_id: str) -> bool:
        """True if this caller may send the order command (no recent send by anyone)."""

    async def release(self, client_order_id: str) -> None:
        """The command certainly did not run: a later submit may send it."""

    async def pending(self, client_order_id: str) -> bool:
        """Whether a command for this id was sent within the grace period."""


class MemoryLedger:
    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace_s, self._clock = grace_s, clock
        self._sent: dict[str, float] = {}

    async def claim(self, client_order_id: str) -> bool:
        if await self.pending(client_order_id):
            return False
        self._sent[client_order_id] = self._clock()
        return True

    async def release(self, client_order_id: str) -> None:
        self._sent.pop(client_order_id, None)

    async def pending(self, client_order_id: str) -> bool:
        at = self._sent.get(client_order_id)
        return at is not None and self._clock() - at < self._grace_s


class RedisLedger:
    """The same record shared by every worker replica: SET NX with the grace period as its TTL."""

    def __init__(self, redis: Any, namespace: str, grace_s: float) -> None:
        self._redis, self._namespace, self._grace_ms = redis, namespace, max(int(grace_s * 1000), 1)

    def _key(self, client_order_id: str) -> str:
        return f"qc:sent:{self._namespace}:{client_order_id}"

    async def claim(self, client_order_id: str) -> bool:
        return bool(await self._redis.set(self._key(client_order_id), "1", nx=True, px=self._grace_ms))

    async def release(self, client_order_id: str) -> None:
        await self._redis.delete(self._key(client_order_id))

    async def pending(self, client_order_id: str) -> bool:
        return bool(await self._redis.exists(self._key(client_order_id)))


# --- the adapter ----------------------------------------------------------------------------------
class QuantConnectVenue:
    name = "quantconnect"

    def __init__(self, settings: QuantConnectSettings, *, confirm_timeout_s: float | None = None,
                 request_timeout_s: float | None = None, ledger: SentLedger | None = None) -> None:
        if not (settings.api_key and settings.project_id and settings.user_id):
            raise ValueError("QuantConnectVenue needs api_key, project_id and user_id")
        self._settings = settings
        self._token = settings.api_key.get_secret_value()
        self._project = int(settings.project_id)
        self._url = settings.base_url.rstrip("/")
        self._confirm_s = settings.confirm_timeout_ms / 1000 if confirm_timeout_s is None else confirm_timeout_s
        self._timeout_s = settings.timeout_ms / 1000 if request_timeout_s is None else request_timeout_s
        self._ledger = ledger or MemoryLedger(settings.listing_grace_s)
        self._session: aiohttp.ClientSession | None = None
        self._lean_ids: dict[str, int] = {}  # client order id -> Lean order id (never changes)
        self._ioc_cancels: dict[int, float] = {}  # Lean order id -> when we last asked to cancel it

    # --- HTTP ------------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the worker's event loop; one pooled session per adapter.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                connector=aiohttp.TCPConnector(limit=32, keepalive_timeout=30),
            )
        return self._session

    def _scrub(self, text: str) -> str:
        text = _HEX_DIGEST.sub("<hash>", text.replace(self._token, "<api token>"))
        return text[:300]

    async def _post(self, endpoint: str, body: dict[str, Any], *, effect: bool) -> dict[str, Any]:
        """One API call; `effect` marks calls that change the venue (a lost answer is then unknown)."""
        what = f"QuantConnect {endpoint}"
        maybe_ran = VenueErrorType.UNKNOWN_OUTCOME if effect else VenueErrorType.TRANSIENT
        headers = auth_headers(self._settings.user_id, self._token, time.time())
        try:
            async with self._client().post(self._url + endpoint, json=body, headers=headers) as response:
                status, retry_after = response.status, response.headers.get("Retry-After")
                text = await response.text()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise VenueError(VenueErrorType.TRANSIENT, f"{what}: cannot connect ({type(exc).__name__})") from None
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise VenueError(maybe_ran, f"{what}: request sent, answer lost ({type(exc).__name__})") from None
        if status == 429:
            pause = _seconds(retry_after) or RATE_LIMIT_PAUSE_S
            raise VenueError(VenueErrorType.RATE_LIMITED, f"{what}: rate limited (HTTP 429)", pause)
        if status in (401, 403):
            raise VenueError(VenueErrorType.REJECTED, f"{what}: QuantConnect refused the credentials "
                             f"(HTTP {status}): check execution.quantconnect.user_id and api_key")
        if status >= 500:
            raise VenueError(maybe_ran, f"{what}: server error HTTP {status}")
        try:
            data = json.loads(text)
            envelope = QCEnvelope.model_validate(data)
        except ValueError:
            kind = maybe_ran if status < 400 else VenueErrorType.REJECTED
            raise VenueError(kind, f"{what}: HTTP {status} without a JSON answer") from None
        if status >= 400 or not envelope.success:
            raise self._refusal(what, status, envelope.errors)
        return data

    def _refusal(self, what: str, status: int, errors: list[str]) -> VenueError:
        text = self._scrub("; ".join(errors) or "no reason given")
        lowered = text.lower()
        if "too many" in lowered or "rate limit" in lowered:
            return VenueError(VenueErrorType.RATE_LIMITED, f"{what}: rate limited: {text}", RATE_LIMIT_PAUSE_S)
        if any(word in lowered for word in ("hash", "authenticat", "unauthori", "timestamp")):
            return VenueError(VenueErrorType.REJECTED, f"{what}: QuantConnect refused the credentials "
                              f"({text}): check execution.quantconnect.user_id and api_key")
        return VenueError(VenueErrorType.REJECTED, f"{what}: refused (HTTP {status}): {text}")

    async def _command(self, command: _Command) -> None:
        await self._post("/live/commands/create", {"projectId": self._project, "command": command.payload()},
                         effect=True)

    async def authenticate(self) -> None:
        """Raises VenueError unless the credentials work (POST /authenticate): for readiness checks."""
        await self._post("/authenticate", {}, effect=False)

    # --- the orders listing ----------------------------------------------------------------------
    async def _page(self, start: int) -> QCOrdersPage:
        data = await self._post("/live/orders/read",
                                {"projectId": self._project, "start": start, "end": start + PAGE}, effect=False)
        return QCOrdersPage.model_validate(data)

    async def _all_orders(self) -> list[QCOrder]:
        orders: list[QCOrder] = []
        start = 0
        while True:
            page = await self._page(start)
            orders += page.orders
            start += len(page.orders)
            if not page.orders or start >= page.length:
                break
        if len(self._lean_ids) > 100_000:  # bounded memory in a long-lived worker; it is only a shortcut
            self._lean_ids.clear()
        for order in orders:
            parsed = parse_tag(order.tag)
            if parsed:
                self._lean_ids.setdefault(parsed[0], order.id)
        return orders

    async def _find(self, client_order_id: str) -> QCOrder | None:
        """The Lean order carrying our tag: its known page first, else the whole listing."""
        known = self._lean_ids.get(client_order_id)
        if known is not None:
            for order in (await self._page(max(known - 1, 0))).orders:
                if order.id == known and (parse_tag(order.tag) or ("",))[0] == client_order_id:
                    return order
        mine = [o for o in await self._all_orders() if (parse_tag(o.tag) or ("",))[0] == client_order_id]
        if len(mine) > 1:
            log.error("QuantConnect lists %d orders tagged %s (ids %s); reporting the first",
                      len(mine), client_order_id, [o.id for o in mine])
        return min(mine, key=lambda o: o.id) if mine else None

    async def _watch(self, client_order_id: str, done: Callable[[QCOrder], bool], deadline: float,
                     ioc: bool = False) -> QCOrder | None:
        """Poll the listing until `done(order)` or the deadline; the last order seen (or None)."""
        seen, delay = None, 0.05
        while True:
            seen = await self._find(client_order_id) or seen
            if seen is not None:
                if ioc:
                    await self._expire_ioc(seen)
                if done(seen):
                    return seen
            if time.monotonic() + delay > deadline:
                return seen
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _expire_ioc(self, order: QCOrder) -> None:
        """IOC emulation: cancel the remainder of an open IOC order (again only after a pause)."""
        if order.closed:
            self._ioc_cancels.pop(order.id, None)
            return
        last = self._ioc_cancels.get(order.id)
        if last is not None and time.monotonic() - last < IOC_CANCEL_RESEND_S:
            return
        self._ioc_cancels[order.id] = time.monotonic()
        try:
            await self._command(CancelOrderCommand(order_id=order.id))
        except VenueError as error:  # tried again on the next look at this order
            log.warning("IOC remainder cancel of QuantConnect order %s failed: %s", order.id, error)

    # --- reports ---------------------------------------------------------------------------------
    def _report(self, order: QCOrder, symbol: str | None = None) -> VenueOrderReport:
        client_order_id, ioc = parse_tag(order.tag) or (order.tag or "", False)
        fills = [
            VenueFill(trade_id=f"{order.id}-{e.order_event_id}", quantity=abs(e.fill_quantity),
                      price=e.fill_price, fee=e.order_fee_amount or Decimal(0),
                      fee_currency=e.order_fee_currency,
                      at=datetime.fromtimestamp(e.time, timezone.utc) if e.time is not None else _now())
            for e in order.events if e.fill_quantity != 0
        ]
        filled = sum((f.quantity for f in fills), Decimal(0))
        lean = order.lean_status
        status, reason = resolve(LEAN_STATUS_TABLE, self.name, lean, filled, abs(order.quantity) or None)
        if status == VenueOrderStatus.CANCELLED and lean == "canceled" and ioc:
            status, reason = VenueOrderStatus.EXPIRED, "IOC remainder cancelled (QuantConnect has no IOC)"
        elif lean == "invalid":
            messages = [e.message for e in order.events if e.message]
            detail = messages[-1] if messages else "the live algorithm marked the order invalid"
            reason = f"{reason}: {detail}" if reason else detail
        ticker = order.symbol.value if order.symbol and order.symbol.value else ""
        return VenueOrderReport(
            exchange=self.name, client_order_id=client_order_id, venue_order_id=str(order.id),
            symbol=symbol or _our_symbol(ticker), status=status, quantity=abs(order.quantity),
            limit_price=order.limit_price if order.is_limit else None, filled_quantity=filled, fills=fills,
            reason=reason, at=max((f.at for f in fills), default=None),
        )

    def _pending(self, client_order_id: str, symbol: str) -> VenueOrderReport:
        return VenueOrderReport(exchange=self.name, client_order_id=client_order_id, symbol=symbol,
                                status=VenueOrderStatus.NEW,
                                reason="order command accepted; not in QuantConnect's orders listing yet")

    # --- VenueAdapter ----------------------------------------------------------------------------
    async def market(self, symbol: str) -> MarketInfo:
        lean_symbol(symbol, self._settings.market)  # raises REJECTED unless BASE/QUOTE
        base, quote = symbol.split("/")
        return MarketInfo(symbol=symbol, base=base, quote=quote, amount_step=Decimal("0.00000001"),
                          price_step=Decimal("0.00000001"))

    def _order_command(self, request: VenueOrderRequest) -> OrderCommand:
        if request.time_in_force == TimeInForce.FOK:
            raise VenueError(VenueErrorType.REJECTED, "FOK is not supported on QuantConnect "
                             "(its order command has no time in force; all-or-nothing cannot be emulated)")
        limit = request.order_type == OrderType.LIMIT
        if limit and request.limit_price is None:
            raise VenueError(VenueErrorType.REJECTED, "a limit order needs limit_price")
        signed = request.quantity if request.side == Side.BUY else -request.quantity
        return OrderCommand(
            symbol=lean_symbol(request.symbol, self._settings.market), order_type="limit" if limit else "market",
            quantity=f"{signed:f}", limit_price=float(request.limit_price) if limit else 0,
            tag=order_tag(request.client_order_id, request.time_in_force == TimeInForce.IOC),
        )

    async def submit(self, request: VenueOrderRequest) -> VenueOrderReport:
        deadline = time.monotonic() + self._confirm_s
        command = self._order_command(request)
        coid, ioc = request.client_order_id, request.time_in_force == TimeInForce.IOC
        # Immediate orders are watched until they finish; resting ones until they are listed.
        done = (lambda o: o.closed) if ioc or request.order_type == OrderType.MARKET else (lambda o: True)
        existing = await self._find(coid)
        if existing is None:
            if await self._ledger.claim(coid):
                try:
                    await self._command(command)
                except VenueError as error:
                    if error.kind != VenueErrorType.UNKNOWN_OUTCOME:  # certainly not placed
                        await self._ledger.release(coid)
                    raise
            # else: sent moments ago (this or another attempt) and not listed yet: never resend.
        elif ioc:
            await self._expire_ioc(existing)
        order = existing if existing is not None and done(existing) else await self._watch(coid, done, deadline, ioc)
        return self._report(order, request.symbol) if order else self._pending(coid, request.symbol)

    async def fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        order = await self._find(ref.client_order_id)
        if order is not None:
            if parse_tag(order.tag)[1]:
                await self._expire_ioc(order)
            return self._report(order, ref.symbol)
        if await self._ledger.pending(ref.client_order_id):
            return self._pending(ref.client_order_id, ref.symbol)
        return VenueOrderReport(exchange=self.name, client_order_id=ref.client_order_id, symbol=ref.symbol,
                                status=VenueOrderStatus.NOT_FOUND)

    async def _listed(self, ref: VenueOrderRef, action: str) -> QCOrder:
        order = await self._find(ref.client_order_id)
        if order is not None:
            return order
        if await self._ledger.pending(ref.client_order_id):
            raise VenueError(VenueErrorType.UNKNOWN_OUTCOME,
                             f"cannot {action} yet: the order is not in QuantConnect's orders listing yet")
        raise VenueError(VenueErrorType.NOT_FOUND, f"QuantConnect has no order tagged {ref.client_order_id}")

    async def cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        deadline = time.monotonic() + self._confirm_s
        order = await self._listed(ref, "cancel")
        if not order.closed:
            await self._command(CancelOrderCommand(order_id=order.id))
            order = await self._watch(ref.client_order_id, lambda o: o.closed, deadline) or order
            if not order.closed:
                raise VenueError(VenueErrorType.UNKNOWN_OUTCOME, "cancel sent; QuantConnect has not confirmed it yet")
        return self._report(order, ref.symbol)

    async def amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        deadline = time.monotonic() + self._confirm_s
        order = await self._listed(request, "amend")
        report = self._report(order, request.symbol)
        if order.closed:
            raise VenueError(VenueErrorType.REJECTED, f"amend refused: order is {report.status.value}")
        if request.limit_price is not None and not order.is_limit:
            raise VenueError(VenueErrorType.REJECTED, "amend refused: only a limit order has a price to amend")
        if request.quantity is not None and request.quantity <= report.filled_quantity:
            raise VenueError(VenueErrorType.REJECTED, "amend refused: new quantity must exceed the filled quantity")
        sign = -1 if order.quantity < 0 else 1
        await self._command(UpdateOrderCommand(
            order_id=order.id, quantity=None if request.quantity is None else f"{sign * request.quantity:f}",
            limit_price=None if request.limit_price is None else float(request.limit_price)))

        def applied(o: QCOrder) -> bool:
            return o.closed or ((request.quantity is None or abs(o.quantity) == request.quantity)
                                and (request.limit_price is None or o.limit_price == request.limit_price))

        order = await self._watch(request.client_order_id, applied, deadline) or order
        if not applied(order):
            raise VenueError(VenueErrorType.UNKNOWN_OUTCOME, "amend sent; QuantConnect has not confirmed it yet")
        return self._report(order, request.symbol)

    async def fetch_open(self, account: str, symbols: list[str] | None = None) -> list[VenueOrderReport]:
        """Our open orders in the project's live algorithm (one project is one account)."""
        tickers = None if symbols is None else {lean_symbol(s, self._settings.market)["value"] for s in symbols}
        reports = []
        for order in await self._all_orders():
            parsed = parse_tag(order.tag)
            if parsed is None or order.closed:
                continue
            if tickers is not None and (order.symbol is None or order.symbol.value not in tickers):
                continue
            if parsed[1]:
                await self._expire_ioc(order)
            reports.append(self._report(order))
        return reports

    async def fetch_closed_since(self, account: str, since_ms: int) -> list[VenueOrderReport]:
        """Our closed orders whose last event is at or after `since_ms` (the listing has them all;
        an order without event times is included: the poller de-duplicates what it signals)."""
        reports = []
        for order in await self._all_orders():
            if parse_tag(order.tag) is None or not order.closed:
                continue
            times = [e.time for e in order.events if e.time is not None]
            if times and max(times) * 1000 < since_ms:
                continue
            reports.append(self._report(order))
        return reports

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


def build_quantconnect_adapter(settings: Settings, redis: Any = None) -> QuantConnectVenue:
    """The adapter for `execution.mode: quantconnect`; a bad or missing key is a ConfigError.

    With `redis`, the record of sent order commands is shared by every worker (see module notes).
    """
    qc = settings.execution.quantconnect
    missing = [key for key, value in (("api_key", qc.api_key), ("project_id", qc.project_id),
                                       ("user_id", qc.user_id)) if not value]
    if missing:
        raise ConfigError(f"{settings.source}: execution.quantconnect.{missing[0]}: "
                          f"mode quantconnect needs quantconnect.{' and '.join(missing)}")
    # Stay inside the venue call's budget (orders.execution_timeout_ms), so that our own timeout and
    # error classification answer first: watch the listing for at most half of it.
    budget_ms = settings.orders.execution_timeout_ms
    confirm_s = min(qc.confirm_timeout_ms, budget_ms // 2) / 1000
    request_s = min(qc.timeout_ms, budget_ms) / 1000
    ledger = RedisLedger(redis, qc.project_id, qc.listing_grace_s) if redis is not None else None
    return QuantConnectVenue(qc, confirm_timeout_s=confirm_s, request_timeout_s=request_s, ledger=ledger)
