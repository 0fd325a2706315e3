"""Routing I/O: the candidate venues' books, fees and health, handed to the pure router.

`RoutingService.plan(signal)` decides which venues an order may use (the signal's own, or every
venue of the execution mode under `execution.routing: smart`, or the first one under `first`),
reads each one's market, taker fee, order book and gate state (breaker open, paused: ineligible),
and calls `oms.routing.route`. `prepare_order` calls it (no extra activity hop on the submission
path); the `plan_route` activity exposes the same for parent orders re-routing what is left.

Books are fetched through the venue adapters, so a direct venue's request passes the shared gate
(rate limits, breaker), and are cached per venue and symbol for `execution.routing_book_ttl_ms`
(concurrent orders for the same book wait for one fetch): a burst of orders costs one book request
per venue, not one per order. The cache holds the book only; gate state is read fresh every time.
"""
from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from temporalio import activity

from activities.venues import VenueError, VenueRegistry
from activities.venues.gate import gate_status
from config.settings import Settings
from oms.generation import market_collar, route as first_rule
from oms.models import OrderType, Signal
from oms.routing import BookLevel, RoutePlan, VenueBook, route
from oms.slicing import SliceError, child_caps
from oms.venue import MarketInfo, VenueErrorType

BOOK_DEPTH = 20  # levels a side read for routing


class RouteRequest(BaseModel):
    signal: Signal
    # Venues the caller rules out (a parent re-routing around a venue that refused its child).
    exclude: list[str] = []


class RoutingRefused(Exception):
    """The order cannot be cut as configured (a child cap below the venue minimum)."""


class RoutingService:
    def __init__(self, registry: VenueRegistry, settings: Settings, redis: Any = None,
                 clock=time.monotonic) -> None:
        self._registry, self._settings, self._redis, self._clock = registry, settings, redis, clock
        self._books: dict[tuple[str, str], tuple[float, VenueBook]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.fetches = 0  # book fetches made (tests, benchmark)

    def candidates(self, signal: Signal) -> tuple[list[str], str]:
        """The venues this order may go to, and why those."""
        execution = self._settings.execution
        if signal.exchange:
            return [signal.exchange], f"pinned to {signal.exchange} by the signal"
        first = first_rule(signal, execution.mode, list(execution.direct.exchanges))
        if execution.routing == "first":
            return [first], f"routing first: {first}"
        if execution.mode == "direct":
            names = [n for n in execution.direct.exchanges if n in self._registry.names]
        elif execution.mode == "simulation":
            names = [n for n in self._registry.names if n == "simulation" or n.startswith("simulation-")]
        else:
            names = [first]
        return names or [first], "smart routing"

    def _caps_apply(self, signal: Signal, venues: list[str]) -> bool:
        execution = self._settings.execution
        return any(child_caps(caps, signal.symbol, v) is not None
                   for caps in (execution.max_child_quantity, execution.max_child_notional) for v in venues)

    async def plan(self, signal: Signal, exclude: list[str] | None = None) -> RoutePlan:
        """The route of `signal`. A plan without legs means "not routed here": the order keeps the
        venue today's rule gives it (one candidate and no child caps, or no venue can fill it)."""
        venues, why = self.candidates(signal)
        venues = [v for v in venues if v not in (exclude or [])] or venues
        if why == "smart routing" and len(venues) == 1:
            why = f"{venues[0]}: the only venue configured"
        empty = RoutePlan(symbol=signal.symbol, side=signal.side, quantity=signal.quantity, legs=[], reason=why)
        if len(venues) == 1 and not self._caps_apply(signal, venues):
            return empty
        books = await asyncio.gather(*(self._venue_book(v, signal.symbol) for v in venues))
        collar = self._collar(signal, books)
        execution = self._settings.execution
        try:
            plan = route(signal.side, signal.quantity, list(books), collar_price=collar,
                         max_child_quantity=execution.max_child_quantity or None,
                         max_child_notional=execution.max_child_notional or None, symbol=signal.symbol)
        except SliceError as error:
            raise RoutingRefused(str(error)) from None
        if not plan.legs:  # the order keeps the first rule's venue: say so, and why
            first = first_rule(signal, execution.mode, list(execution.direct.exchanges))
            limit = " (its limit price)" if collar is not None and collar == signal.limit_price else ""
            plan = plan.model_copy(update={"reason": f"{plan.reason}{limit}; sent to {first} (the first rule)"})
        return plan

    def _collar(self, signal: Signal, books: tuple[VenueBook, ...]) -> Decimal | None:
        """A limit order's limit; a market order's collar around the best venue's mid (the signal's
        reference price can only narrow it), as each child's own collar is set at its venue."""
        if signal.limit_price is not None and signal.order_type != OrderType.MARKET:
            return signal.limit_price
        mids = [(b.bids[0].price + b.asks[0].price) / 2 for b in books if b.eligible and b.bids and b.asks]
        if not mids and signal.reference_price is None:
            return None
        best = (min(mids) if signal.side.value == "buy" else max(mids)) if mids else None
        steps = [b.market.price_step for b in books if b.market.price_step > 0]
        floor = min(steps) if steps else Decimal("0.00000001")
        return market_collar(signal.side, best, signal.reference_price,
                             Decimal(repr(self._settings.orders.max_slippage_bps)), floor)

    async def _venue_book(self, exchange: str, symbol: str) -> VenueBook:
        """Gate state first (fresh each time): a venue with an open breaker or a pause is not asked."""
        problem = await self._gate_problem(exchange)
        if problem:
            return _ineligible(exchange, symbol, problem)
        return await self._cached_book(exchange, symbol)

    async def _cached_book(self, exchange: str, symbol: str) -> VenueBook:
        key, ttl = (exchange, symbol), self._settings.execution.routing_book_ttl_ms / 1000
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._books.get(key)
            if cached and self._clock() - cached[0] < ttl:
                return cached[1]
            book = await self._fetch(exchange, symbol)
            self._books[key] = (self._clock(), book)
            return book

    async def _fetch(self, exchange: str, symbol: str) -> VenueBook:
        if exchange not in self._registry.names:
            return _ineligible(exchange, symbol, "venue not configured")
        adapter = self._registry.get(exchange)
        if not hasattr(adapter, "order_book"):
            return _ineligible(exchange, symbol, "venue gives no order book")
        try:
            market = await adapter.market(symbol)
        except VenueError as error:
            return _ineligible(exchange, symbol, "market not listed" if error.kind == VenueErrorType.REJECTED
                               else f"market unavailable: {error}"[:200])
        try:
            self.fetches += 1
            bids, asks = await adapter.order_book(symbol, BOOK_DEPTH)
        except VenueError as error:
            return _ineligible(exchange, symbol, f"book unavailable: {error}"[:200], market)
        return VenueBook(exchange=exchange, market=market, taker_fee=market.taker_fee,
                         bids=[BookLevel(price=p, quantity=q) for p, q in bids],
                         asks=[BookLevel(price=p, quantity=q) for p, q in asks],
                         fetched_at_ms=int(time.time() * 1000))

    async def _gate_problem(self, exchange: str) -> str | None:
        """Breaker open or account paused (a direct venue's shared gate), else None."""
        if self._redis is None or exchange not in self._settings.execution.direct.exchanges:
            return None
        status = await gate_status(self._redis, exchange, self._settings.execution.direct.account(exchange).account)
        if status["circuit"] == "open":
            return f"circuit breaker open ({status['open_for_s']} s left)"
        if status["paused_for_s"] > 0:
            return f"paused ({status['pause_reason'] or 'rate limited'}, {status['paused_for_s']} s left)"
        return None


def _ineligible(exchange: str, symbol: str, reason: str, market: MarketInfo | None = None) -> VenueBook:
    base, _, quote = symbol.partition("/")
    market = market or MarketInfo(symbol=symbol, base=base, quote=quote, amount_step=Decimal(0), price_step=Decimal(0))
    return VenueBook(exchange=exchange, market=market, taker_fee=market.taker_fee, eligible=False,
                     ineligible_reason=reason)


class RoutingActivities:
    def __init__(self, service: RoutingService) -> None:
        self._service = service

    @activity.defn(name="plan_route")
    async def plan_route(self, request: RouteRequest) -> RoutePlan:
        """The route of an order now (see RoutingService.plan). A child cap the venue minimum makes
        impossible raises a non-retryable ApplicationError of type RoutingRefused."""
        from temporalio.exceptions import ApplicationError

        try:
            return await self._service.plan(request.signal, request.exclude)
        except RoutingRefused as error:
            raise ApplicationError(str(error), type="RoutingRefused", non_retryable=True) from None

    def all(self) -> list:
        return [self.plan_route]
