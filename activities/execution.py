"""Execution activities: the workflow's only way to reach a venue.

Each activity looks the adapter up by exchange name and turns a `VenueError` into an
`ApplicationError` whose type the workflow's retry logic understands (see oms.venue.VenueErrorType).
`prepare_order` records in history everything the workflow decides from: the worker's order
parameters and limits, the route, the market's constraints and its current prices (`VenuePrices`:
top of book and the price of the quote currency in the account currency). `read_prices` reads
them again where a decision needs fresh ones (after a start_at wait, before an amend).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.limits import DailyOrderDecision, DailyOrderLimit, DailyOrderReservation
from activities.routing import RoutingRefused, RoutingService
from activities.venues import VenueError, VenueRegistry
from config.settings import AccountLimits, OrderParams, Settings
from oms.generation import route
from oms.models import Signal
from oms.pricing import VenuePrices, conversion_candidates, conversion_from_mid
from oms.routing import RoutePlan
from oms.venue import (
    MarketInfo,
    VenueAmendRequest,
    VenueErrorType,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
)

_NON_RETRYABLE = {VenueErrorType.REJECTED, VenueErrorType.NOT_FOUND, VenueErrorType.UNSUPPORTED,
                  VenueErrorType.UNKNOWN_OUTCOME}


class OrderContext(BaseModel):
    params: OrderParams
    limits: AccountLimits
    mode: str
    exchange: str
    account: str = "default"
    market: MarketInfo | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    estimated_slippage_bps: Decimal | None = None
    problem: str | None = None  # unknown exchange or symbol: the order will be denied with this
    max_venue_wait_s: float = 600.0  # total wait on a paused venue or an open breaker before failing
    # The daily-cap slot taken here, saving the order a round trip; released if the order never goes out.
    daily_reservation: DailyOrderReservation | None = None
    daily_decision: DailyOrderDecision | None = None
    rerouted_from: str | None = None  # the routed venue's breaker was open: this order went elsewhere
    # How long a request already sent can still reach the venue (its receive window plus clock margin):
    # a "not found" is final only after it. Simulation and QuantConnect keep the ccxt default.
    receive_window_ms: int = 6_000
    # Venue prices and the account currency; None in a context recorded by release 0.1, whose
    # orders keep that release's validation rules (oms/validation_legacy.py) so they replay.
    prices: VenuePrices | None = None
    # The router's decision (activities/routing.py), None where no router ran (release 0.2 and before).
    # Several legs: the order becomes a parent (nothing else here is filled in, no daily slot taken).
    route: RoutePlan | None = None
    route_refusal: str | None = None  # the child caps cannot be honoured on this venue: deny with this


class PriceQuery(BaseModel):
    exchange: str
    symbol: str
    quote_currency: str
    account_currency: str


def to_application_error(error: VenueError) -> ApplicationError:
    """The workflow reads the wait a busy venue asks for from the first detail."""
    delay = timedelta(seconds=error.retry_after_s) if error.retry_after_s else None
    details = [{"retry_after_s": error.retry_after_s}] if error.retry_after_s else []
    return ApplicationError(str(error), *details, type=error.kind.value,
                            non_retryable=error.kind in _NON_RETRYABLE, next_retry_delay=delay)


class ExecutionActivities:
    def __init__(self, registry: VenueRegistry, settings: Settings, daily_limit: DailyOrderLimit | None = None,
                 routing: RoutingService | None = None) -> None:
        self._registry = registry
        self._settings = settings
        self._daily_limit = daily_limit
        self._routing = routing

    async def _call(self, exchange: str, method: str, *args):
        try:
            adapter = self._registry.get(exchange)
            return await getattr(adapter, method)(*args)
        except VenueError as error:
            raise to_application_error(error) from None

    @activity.defn(name="prepare_order")
    async def prepare_order(self, signal: Signal) -> OrderContext:
        s = self._settings
        exchange = route(signal, s.execution.mode, list(s.execution.direct.exchanges))
        plan, refusal = None, None
        if self._routing is not None and (signal.execution is None or signal.execution.algo is None):
            try:
                plan = await self._routing.plan(signal)
            except RoutingRefused as error:
                refusal = str(error)
        rerouted_from = None
        if plan is not None and plan.legs:
            first, exchange = exchange, plan.legs[0].exchange
            if exchange != first and f"{first}: circuit breaker open" in " ".join(plan.considered):
                rerouted_from = first  # said as the first rule's reroute says it
        if (plan is None or not plan.legs) and signal.exchange is None \
                and s.execution.direct.circuit_breaker.on_open == "reroute":
            exchange, rerouted_from = await self._route_around_open_circuits(exchange)
        context = OrderContext(params=s.orders, limits=s.account_limits, mode=s.execution.mode,
                               exchange=exchange, max_venue_wait_s=s.execution.direct.max_wait_s,
                               rerouted_from=rerouted_from, route=plan, route_refusal=refusal,
                               receive_window_ms=s.execution.direct.account(exchange).recv_window_ms + 1_000
                               if exchange in ("binance", "bybit") else 6_000)
        if refusal is not None or (plan is not None and plan.is_split):
            return context  # denied with the refusal, or a parent whose children prepare themselves
        if exchange not in self._registry.names:
            return context.model_copy(update={"problem": f"unknown exchange {exchange!r}"})
        adapter = self._registry.get(exchange)
        try:
            market = await adapter.market(signal.symbol)
            quote = await adapter.quote(signal.symbol) if hasattr(adapter, "quote") else None
        except VenueError as error:
            if error.kind == VenueErrorType.REJECTED:
                return context.model_copy(update={"problem": str(error)})
            raise to_application_error(error) from None
        update: dict = {"market": market}
        try:
            update["prices"] = await self._prices(adapter, signal.symbol, market.quote, s.account_limits.currency, quote)
        except VenueError as error:  # the conversion pair's book: retried like any venue read
            raise to_application_error(error) from None
        if self._daily_limit is not None:
            reservation = DailyOrderReservation(
                account=f"{exchange}:{getattr(adapter, 'account', 'default')}", order_id=activity.info().workflow_id,
                day=datetime.now(timezone.utc).strftime("%Y-%m-%d"), limit=s.account_limits.max_daily_orders)
            update.update(daily_reservation=reservation, daily_decision=await self._daily_limit.reserve(reservation))
        if quote is not None:
            update.update(bid=quote.bid, ask=quote.ask)
            estimate = getattr(adapter, "estimate_slippage_bps", None)
            if estimate is not None:
                update["estimated_slippage_bps"] = estimate(signal.symbol, signal.side, signal.quantity)
        return context.model_copy(update=update)

    @activity.defn(name="read_prices")
    async def read_prices(self, query: PriceQuery) -> VenuePrices:
        try:
            adapter = self._registry.get(query.exchange)
            quote = await adapter.quote(query.symbol) if hasattr(adapter, "quote") else None
            return await self._prices(adapter, query.symbol, query.quote_currency, query.account_currency, quote)
        except VenueError as error:
            raise to_application_error(error) from None

    async def _prices(self, adapter, symbol: str, quote_currency: str, account_currency: str, quote) -> VenuePrices:
        """The top of book and the venue's price of the quote currency in the account currency
        (None where the venue lists no pair for it: the order is then refused, not misvalued)."""
        prices = VenuePrices(account_currency=account_currency,
                             bid=quote.bid if quote is not None else None, ask=quote.ask if quote is not None else None)
        if quote_currency == account_currency:
            return prices.model_copy(update={"conversion_price": Decimal(1)})
        if not hasattr(adapter, "quote"):
            return prices
        for pair, inverted in conversion_candidates(quote_currency, account_currency):
            try:
                pair_quote = await adapter.quote(pair)
            except VenueError as error:
                if error.kind == VenueErrorType.REJECTED:  # the venue does not list this pair
                    continue
                raise
            if pair_quote.bid > 0 and pair_quote.ask > 0:
                return prices.model_copy(update={"conversion_symbol": pair,
                                                 "conversion_price": conversion_from_mid(pair_quote.mid, inverted)})
        return prices

    async def _route_around_open_circuits(self, preferred: str) -> tuple[str, str | None]:
        """A new order whose venue has an open breaker goes to the next configured one that has not."""
        if not await self._circuit_open(preferred):
            return preferred, None
        for alternative in self._settings.execution.direct.exchanges:
            if alternative != preferred and alternative in self._registry.names and not await self._circuit_open(alternative):
                return alternative, preferred
        return preferred, None  # nowhere better: wait for it

    async def _circuit_open(self, exchange: str) -> bool:
        if exchange not in self._registry.names:
            return False
        probe = getattr(self._registry.get(exchange), "circuit_open", None)
        return bool(probe and await probe())

    @activity.defn(name="venue_submit")
    async def venue_submit(self, request: VenueOrderRequest) -> VenueOrderReport:
        return await self._call(request.exchange, "submit", request)

    @activity.defn(name="venue_fetch")
    async def venue_fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        return await self._call(ref.exchange, "fetch", ref)

    @activity.defn(name="venue_cancel")
    async def venue_cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        return await self._call(ref.exchange, "cancel", ref)

    @activity.defn(name="venue_amend")
    async def venue_amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        return await self._call(request.exchange, "amend", request)

    def all(self) -> list:
        return [self.prepare_order, self.read_prices, self.venue_submit, self.venue_fetch, self.venue_cancel, self.venue_amend]
