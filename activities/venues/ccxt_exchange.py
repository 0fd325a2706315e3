"""Direct execution: Binance (spot) and Bybit (v5 spot) through ccxt's async client.

One pooled client per exchange and account per worker process, markets loaded once and refreshed
hourly, credentials only from the environment. Every request passes the shared gate (pause,
breaker, rate limits; see gate.py).

Never placed twice. Before the first send of a client order id we mark it in Redis (SET NX). If the
mark exists, an earlier attempt (a retry, a worker that crashed mid-call, a replay) may have placed
the order, so we look it up first; only a confirmed "not found" sends again, and only once that
earlier request's receive window (`recv_window_ms`) has passed, after which the venue refuses it
even if it is still in flight somewhere. A duplicate-client-id rejection means "already placed".
That matters on Binance, which refuses a duplicate client id only while the first order is open.

Errors become the contract's VenueErrorType: a refusal is REJECTED; a request that could not be
sent (connection refused, our gate, a 429) is TRANSIENT or RATE_LIMITED; anything after which the
venue may have acted (timeout, dropped connection, 5xx) on an order-changing call is UNKNOWN_OUTCOME,
which the workflow reconciles. Reads never change anything, so their failures are TRANSIENT.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt
import redis.asyncio as aioredis

from activities.venues.ccxt_client import CLIENT_CLASSES, RATE_LIMIT_ERRORS, is_nothing_sent
from activities.venues.ccxt_dialects import DIALECTS, Dialect
from activities.venues.gate import GateLimits, VenueGate, background, gate_status, patience
from activities.venues import VenueError
from config.settings import ExchangeSettings, Settings
from oms.models import OrderType, Side
from oms.venue_status import resolve
from oms.venue import (
    OPEN_STATUSES,
    MarketInfo,
    MarketQuote,
    VenueAmendRequest,
    VenueErrorType,
    VenueFill,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
    VenueOrderStatus,
)

log = logging.getLogger("tom.venue.ccxt")
MARKETS_TTL_S = 3600
QUOTE_TTL_S = 1.0  # a reference price a second old is fine for a collar; saves a request per order
SENT_MARK_TTL_S = 7 * 86400
CLOCK_MARGIN_MS = 1000  # our clocks against the venue's, on top of its receive window
BOOK_DEPTH = 5
POLL_WEIGHT_SHARE = 0.5
POLL_PATIENCE_MS = 30_000
SYMBOL_SKEW_MS = 60_000  # our clock against the venue's, for which symbols the catch-up asks
# Errors after which the venue certainly did not receive the order (our gate, a 429, a refused connection).
NOTHING_SENT = frozenset({VenueErrorType.TRANSIENT, VenueErrorType.RATE_LIMITED, VenueErrorType.CIRCUIT_OPEN})

_REFUSALS = (ccxt.InvalidOrder, ccxt.InsufficientFunds, ccxt.BadRequest, ccxt.BadSymbol, ccxt.AuthenticationError,
             ccxt.PermissionDenied, ccxt.AccountSuspended, ccxt.NotSupported, ccxt.ArgumentsRequired)


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def _step(client: ccxt.Exchange, precision: Any) -> Decimal:
    if precision is None:
        return Decimal("0.00000001")
    if client.precisionMode == ccxt.DECIMAL_PLACES:
        return Decimal(1).scaleb(-int(precision))
    return _dec(precision)


def _at(timestamp_ms: Any) -> datetime:
    seconds = (timestamp_ms or time.time() * 1000) / 1000
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def sent_mark_key(exchange: str, account: str, client_order_id: str) -> str:
    """Where submit marks, before sending, the time (ms) an order went out (also read by bench.latency)."""
    return f"venue:{exchange}:{account}:sent:{client_order_id}"


class CcxtVenue:
    def __init__(self, name: str, client: ccxt.Exchange, dialect: Dialect, redis: aioredis.Redis,
                 account_settings: ExchangeSettings, commit_patience_ms: int = 1000) -> None:
        self.name, self.client, self.dialect = name, client, dialect
        self._commit_patience_ms = commit_patience_ms
        self.account = account_settings.account
        self._redis = redis
        self._recv_window_ms = account_settings.recv_window_ms
        self._markets_at = 0.0
        self._markets_lock = asyncio.Lock()
        self._books: dict[str, tuple[float, dict]] = {}
        self._taker_fee = account_settings.taker_fee  # this account's rate, where configured

    def _committed(self):
        """An operation that already spent request weight (a lookup before a create, a cancel before
        its fetch) waits longer in the gate for its next request: giving up would repeat the first."""
        return patience(self._commit_patience_ms)

    # --- reference data ---------------------------------------------------------------------------
    async def _ensure_markets(self) -> None:
        if time.monotonic() - self._markets_at < MARKETS_TTL_S and self.client.markets:
            return
        async with self._markets_lock:
            if time.monotonic() - self._markets_at < MARKETS_TTL_S and self.client.markets:
                return
            try:
                await self.client.load_markets(reload=bool(self.client.markets))
            except ccxt.BaseError as error:
                raise self._read_error(error) from None
            self._markets_at = time.monotonic()

    async def _ccxt_market(self, symbol: str) -> dict:
        await self._ensure_markets()
        market = self.client.markets.get(symbol)
        if market is None:
            raise VenueError(VenueErrorType.REJECTED, f"unknown symbol {symbol} on {self.name}")
        return market

    async def market(self, symbol: str) -> MarketInfo:
        m = await self._ccxt_market(symbol)
        limits = m.get("limits") or {}
        return MarketInfo(
            symbol=symbol, base=m["base"], quote=m["quote"],
            amount_step=_step(self.client, m["precision"].get("amount")),
            price_step=_step(self.client, m["precision"].get("price")),
            min_amount=_dec((limits.get("amount") or {}).get("min")),
            min_notional=_dec((limits.get("cost") or {}).get("min")),
            active=m.get("active") is not False,
            maker_fee=_dec(m.get("maker") if m.get("maker") is not None else "0.001"),
            taker_fee=(Decimal(repr(self._taker_fee)) if self._taker_fee is not None
                       else _dec(m.get("taker") if m.get("taker") is not None else "0.001")),
        )

    async def quote(self, symbol: str) -> MarketQuote:
        market = await self.market(symbol)
        book = await self._book(symbol)
        if not book.get("bids") or not book.get("asks"):
            raise VenueError(VenueErrorType.TRANSIENT, f"{self.name} has an empty book for {symbol}")
        return MarketQuote(market=market, bid=_dec(book["bids"][0][0]), ask=_dec(book["asks"][0][0]),
                           at=_at(book.get("timestamp")))

    async def _book(self, symbol: str) -> dict:
        cached = self._books.get(symbol)
        if cached and time.monotonic() - cached[0] < QUOTE_TTL_S:
            return cached[1]
        try:
            book = await self.client.fetch_order_book(symbol, BOOK_DEPTH)
        except ccxt.BaseError as error:
            raise self._read_error(error) from None
        self._books[symbol] = (time.monotonic(), book)
        return book

    async def order_book(self, symbol: str, depth: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """(bids, asks), best first, `depth` levels a side: one request through the gate, for routing
        (activities/routing.py caches it briefly across orders)."""
        try:
            book = await self.client.fetch_order_book(symbol, depth)
        except ccxt.BaseError as error:
            raise self._read_error(error) from None
        self._books[symbol] = (time.monotonic(), book)  # a fresh top of book for quotes too
        return ([(_dec(p), _dec(q)) for p, q, *_ in book.get("bids") or []],
                [(_dec(p), _dec(q)) for p, q, *_ in book.get("asks") or []])

    def estimate_slippage_bps(self, symbol: str, side: Side, quantity: Decimal) -> Decimal | None:
        """Walk the last seen book: average price of taking `quantity` against mid, in basis points."""
        cached = self._books.get(symbol)
        if not cached or not cached[1].get("bids") or not cached[1].get("asks"):
            return None
        book = cached[1]
        mid = (_dec(book["bids"][0][0]) + _dec(book["asks"][0][0])) / 2
        levels = book["asks"] if side == Side.BUY else book["bids"]
        left, cost = quantity, Decimal(0)
        for price, size, *_ in levels:
            take = min(left, _dec(size))
            cost += take * _dec(price)
            left -= take
            if left <= 0:
                break
        taken = quantity - left
        if taken <= 0:
            return None
        return (abs(cost / taken - mid) / mid * 10_000).quantize(Decimal("0.01"))

    # --- orders -----------------------------------------------------------------------------------
    def _sent_key(self, client_order_id: str) -> str:
        return sent_mark_key(self.name, self.account, client_order_id)

    def _symbols_key(self) -> str:
        """Sorted set: symbol by the last time (ms) we sent it an order (Binance lists closed orders
        per symbol only; the catch-up asks only the symbols that can have new orders)."""
        return f"venue:{self.name}:{self.account}:symbols"

    async def submit(self, request: VenueOrderRequest) -> VenueOrderReport:
        await self._ccxt_market(request.symbol)
        await self._redis.zadd(self._symbols_key(), {request.symbol: int(time.time() * 1000)})
        ref = VenueOrderRef(exchange=self.name, account=request.account, client_order_id=request.client_order_id,
                            symbol=request.symbol)
        now_ms = int(time.time() * 1000)
        key = self._sent_key(request.client_order_id)
        if not await self._redis.set(key, now_ms, nx=True, ex=SENT_MARK_TTL_S):
            existing = await self.fetch(ref)  # an earlier attempt may have placed it
            if existing.status != VenueOrderStatus.NOT_FOUND:
                return existing
            previous = await self._redis.get(key)
            if now_ms < int(previous or 0) + self._recv_window_ms + CLOCK_MARGIN_MS:
                raise VenueError(VenueErrorType.UNKNOWN_OUTCOME,
                                 "an earlier attempt may still reach the venue; looking again after its receive window")
            await self._redis.set(key, now_ms, ex=SENT_MARK_TTL_S)
            with self._committed():
                return await self._create(request, ref, key, previous)
        return await self._create(request, ref, key, None)

    async def _create(self, request: VenueOrderRequest, ref: VenueOrderRef, key: str,
                      previous: str | None) -> VenueOrderReport:
        """Send the order (its sent mark is set); `previous` is the mark to restore if nothing was sent."""
        limit = request.order_type == OrderType.LIMIT
        try:
            order = await self.client.create_order(
                request.symbol, request.order_type.value, request.side.value, str(request.quantity),
                str(request.limit_price) if limit and request.limit_price else None,
                self.dialect.order_params(request.client_order_id, request.time_in_force.value if limit else None))
        except (ccxt.BaseError, VenueError) as error:
            if isinstance(error, ccxt.BaseError) and self.dialect.is_duplicate(error):
                with self._committed():
                    existing = await self.fetch(ref)
                if existing.status == VenueOrderStatus.NOT_FOUND:
                    raise VenueError(VenueErrorType.UNKNOWN_OUTCOME, f"duplicate client id but no order: {error}") from None
                return existing
            failure = error if isinstance(error, VenueError) else self._write_error(error, "submit")
            if failure.kind in NOTHING_SENT:  # the mark must not make the next attempt wait for nothing
                await (self._redis.set(key, previous, ex=SENT_MARK_TTL_S) if previous else self._redis.delete(key))
            raise failure from None
        with self._committed():
            if order.get("status") is None:  # an acknowledgement only (Bybit): ask for the order's state
                return await self.fetch(ref)
            return await self._report(order, request.symbol, request.client_order_id)

    async def fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        await self._ccxt_market(ref.symbol)
        try:
            order = await self.dialect.fetch_by_client_id(self.client, ref.symbol, ref.client_order_id)
        except ccxt.BaseError as error:
            raise self._read_error(error) from None
        if order is None:
            return VenueOrderReport(exchange=self.name, client_order_id=ref.client_order_id, symbol=ref.symbol,
                                    status=VenueOrderStatus.NOT_FOUND)
        with self._committed():
            return await self._report(order, ref.symbol, ref.client_order_id)

    async def cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        await self._ccxt_market(ref.symbol)
        try:
            await self.dialect.cancel_by_client_id(self.client, ref.symbol, ref.client_order_id)
        except ccxt.OrderNotFound:
            pass  # already finished (filled, cancelled) or never placed: the lookup below says which
        except ccxt.BaseError as error:
            raise self._write_error(error, "cancel") from None
        with self._committed():
            report = await self.fetch(ref)  # the cancel's answer lacks the fills; the order has them all
        if report.status == VenueOrderStatus.NOT_FOUND:
            raise VenueError(VenueErrorType.NOT_FOUND, f"{self.name} has no order {ref.client_order_id}")
        return report

    async def amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        if not self.dialect.native_amend:
            raise VenueError(VenueErrorType.UNSUPPORTED, f"{self.name}: amend by cancel-and-replace")
        ref = VenueOrderRef(**request.model_dump(include={"exchange", "account", "client_order_id", "symbol"}))
        current = await self.fetch(ref)
        if current.status not in OPEN_STATUSES:
            raise VenueError(VenueErrorType.REJECTED, f"order is {current.status.value}")
        order = {"symbol": request.symbol, "clientOrderId": request.client_order_id}
        with self._committed():
            try:
                await self.dialect.amend(self.client, order, str(request.quantity) if request.quantity else None,
                                         str(request.limit_price) if request.limit_price else None)
            except ccxt.OrderNotFound as error:
                raise VenueError(VenueErrorType.REJECTED, f"amend refused, order no longer open: {error}") from None
            except ccxt.BaseError as error:
                raise self._write_error(error, "amend") from None
            return await self.fetch(ref)

    async def fetch_open(self, account: str, symbols: list[str] | None = None) -> list[VenueOrderReport]:
        """All open orders of the account in one call (Bybit: one per 50), without their trades:
        `fills_complete` is false, so a workflow that sees more filled fetches its order in full."""
        await self._ensure_markets()
        try:
            with background(POLL_PATIENCE_MS):  # no order waits on it: it yields, and may queue
                orders = await self.dialect.open_orders(self.client)
        except ccxt.BaseError as error:
            raise self._read_error(error) from None
        reports = []
        for order in orders:
            if not order.get("clientOrderId") or (symbols and order.get("symbol") not in symbols):
                continue
            reports.append(self._to_report(order, order["symbol"], order["clientOrderId"], [], complete=False))
        return reports

    async def fetch_closed_since(self, account: str, since_ms: int) -> list[VenueOrderReport]:
        """Our orders created at or after `since_ms` that are no longer open, without their trades
        (`fills_complete` false): what the poller needs for orders that ended between two listings."""
        await self._ensure_markets()
        # An order created at or after `since_ms` was sent at about that time or later.
        symbols = await self._redis.zrangebyscore(self._symbols_key(), since_ms - SYMBOL_SKEW_MS, "+inf")
        try:
            with background(POLL_PATIENCE_MS):  # no order waits on it: it yields, and may queue
                orders = await self.dialect.orders_since(self.client, symbols, since_ms)
        except ccxt.BaseError as error:
            raise self._read_error(error) from None
        reports = []
        for order in orders:
            if not order.get("clientOrderId") or not order.get("symbol"):
                continue
            report = self._to_report(order, order["symbol"], order["clientOrderId"], [], complete=False)
            if report.status not in OPEN_STATUSES:
                reports.append(report)
        return reports

    @property
    def min_poll_interval_s(self) -> float:
        """The batched fill poller spends at most half of the account's request weight."""
        return self.dialect.open_orders_cost / (POLL_WEIGHT_SHARE * self.client.gate.limits.weight_per_s)

    async def circuit_open(self) -> bool:
        """Whether this account's breaker is open now (new orders may be routed elsewhere)."""
        return (await gate_status(self._redis, self.name, self.account))["circuit"] == "open"

    async def close(self) -> None:
        await self.client.close()

    # --- translation ------------------------------------------------------------------------------
    async def _report(self, order: dict, symbol: str, client_order_id: str) -> VenueOrderReport:
        filled = _dec(order.get("filled"))
        trades = order.get("trades") or []
        if filled > 0 and sum((_dec(t.get("amount")) for t in trades), Decimal(0)) < filled:
            try:
                trades = await self.client.fetch_my_trades(symbol, params={"orderId": order["id"]})
            except ccxt.BaseError as error:
                raise self._read_error(error) from None
            trades = [t for t in trades if str(t.get("order")) == str(order["id"])]
        return self._to_report(order, symbol, client_order_id, trades, complete=True)

    def _to_report(self, order: dict, symbol: str, client_order_id: str, trades: list[dict],
                   complete: bool) -> VenueOrderReport:
        filled = _dec(order.get("filled"))
        # The venue's own status word, by the dialect's table: ccxt's unified `closed` would call a
        # partially filled, cancelled remainder filled.
        status, reason = resolve(self.dialect.status_table, self.name, self.dialect.raw_status(order), filled,
                                 _dec(order.get("amount")) or None)
        fills = []
        for trade in trades:
            fee = trade.get("fee") or {}
            fills.append(VenueFill(
                trade_id=str(trade["id"]), quantity=_dec(trade["amount"]), price=_dec(trade["price"]),
                fee=_dec(fee.get("cost")), fee_currency=fee.get("currency"),
                liquidity=trade.get("takerOrMaker"), at=_at(trade.get("timestamp"))))
        return VenueOrderReport(
            exchange=self.name, client_order_id=client_order_id, venue_order_id=str(order.get("id") or "") or None,
            symbol=symbol, status=status, quantity=_dec(order.get("amount")) or None,
            limit_price=_dec(order.get("price")) or None, filled_quantity=filled, fills=fills,
            fills_complete=complete, reason=reason,
            at=_at(order.get("lastUpdateTimestamp") or order.get("timestamp")))

    def _read_error(self, error: ccxt.BaseError) -> VenueError:
        """A failed read changed nothing at the venue: retrying is always safe."""
        if isinstance(error, VenueError):
            return error
        if isinstance(error, RATE_LIMIT_ERRORS):
            return VenueError(VenueErrorType.RATE_LIMITED, f"{self.name}: {error}", retry_after_s=1.0)
        if isinstance(error, (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.BadSymbol)):
            return VenueError(VenueErrorType.REJECTED, f"{self.name}: {error}")
        return VenueError(VenueErrorType.TRANSIENT, f"{self.name}: {type(error).__name__}: {error}")

    def _write_error(self, error: ccxt.BaseError, action: str) -> VenueError:
        """After an order-changing call failed: did the venue act? If it may have, say so."""
        text = f"{self.name} {action}: {type(error).__name__}: {error}"
        if isinstance(error, RATE_LIMIT_ERRORS):
            return VenueError(VenueErrorType.RATE_LIMITED, text, retry_after_s=1.0)
        if isinstance(error, ccxt.InvalidNonce) or (isinstance(error, ccxt.ExchangeNotAvailable) and is_nothing_sent(error)):
            return VenueError(VenueErrorType.TRANSIENT, text)  # refused before acting, or never sent
        if isinstance(error, _REFUSALS):
            return VenueError(VenueErrorType.REJECTED, text)
        return VenueError(VenueErrorType.UNKNOWN_OUTCOME, text)


def _gate_limits(settings: Settings, client: ccxt.Exchange, account: ExchangeSettings) -> GateLimits:
    orders, breaker = settings.orders, settings.execution.direct.circuit_breaker
    return GateLimits(
        orders=orders.rate_limit_orders, window_ms=orders.rate_limit_window_ms,
        weight_per_s=1000 / float(client.rateLimit or 50),  # ccxt's cost units per second for this venue
        failure_threshold=breaker.failure_threshold, open_s=breaker.open_seconds,
        max_wait_ms=max(100, min(1000, orders.execution_timeout_ms // 4)),
        probe_timeout_ms=account.timeout_ms)


def build_client(name: str, account: ExchangeSettings) -> ccxt.Exchange:
    dialect = DIALECTS[name]
    config: dict[str, Any] = {"enableRateLimit": False, "timeout": account.timeout_ms,
                              "options": dialect.options(account.recv_window_ms)}
    if account.api_key:
        config["apiKey"] = account.api_key.get_secret_value()
    if account.secret:
        config["secret"] = account.secret.get_secret_value()
    client = CLIENT_CLASSES[name](config)
    if account.sandbox:
        client.set_sandbox_mode(True)
    if account.base_url:
        client.urls["api"] = dialect.rewrite_urls(client.urls["api"], account.base_url)
    client.order_endpoints = dialect.order_endpoints
    client.has["fetchCurrencies"] = False  # Bybit would still ask for currencies (a signed call) otherwise
    return client


def build_ccxt_adapters(settings: Settings, redis: aioredis.Redis) -> list[CcxtVenue]:
    direct = settings.execution.direct
    adapters = []
    for name in direct.exchanges:
        account = direct.account(name)
        client = build_client(name, account)
        client.gate = VenueGate(redis, name, account.account, _gate_limits(settings, client, account))
        # Inside the workflow's venue-call timeout, with room left for the request itself.
        commit_patience_ms = max(200, settings.orders.execution_timeout_ms // 2)
        adapters.append(CcxtVenue(name, client, DIALECTS[name], redis, account, commit_patience_ms))
    return adapters
