"""A venue scripted by the test, served under the real activity names the workflow calls
(prepare_order, prepare_and_place, read_prices, venue_submit, venue_fetch, venue_cancel, venue_amend;
prepare_and_place runs the real activity's logic on the scripted preparation and submission;
record_progress is the real one, wrapped to see every fill handed to it).

The venue keeps its own book of orders by client order id, as an exchange does, and watches the
invariants the workflow must keep: at most one live venue order per order, every venue order ended
by the time the workflow ends. Each call's outcome comes from `script[method]` (a targeted test
queues them) or, when that is empty, from the seeded generator `rng` (the model-based test):
answered, answer lost after acting, request lost before arriving, request delayed (it lands one call
later), transient refusal, venue refusal. Market events (fills, the venue ending an order) are
driven by the test between workflow actions.
"""
from __future__ import annotations

import asyncio
import random
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.execution import OrderContext, PriceQuery
from activities.limits import DailyOrderDecision
from activities.placement import PlaceRequest, PreparedPlacement, order_to_place, prepare_and_place
from activities.publish import OrderProgress, PublishActivities
from oms.models import OrderType, Signal, TimeInForce
from oms.pricing import VenuePrices
from oms.venue import (
    OPEN_STATUSES,
    MarketInfo,
    VenueAmendRequest,
    VenueErrorType,
    VenueFill,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
    VenueOrderStatus,
)

EXCHANGE = "scripted"
STEP = Decimal("0.01")
OUTCOMES = ("ok", "lost_after", "lost_before", "delayed", "transient", "refused")
# Weights of the generator's outcomes per call kind (reads never act, so they only fail transiently).
CHANGE_WEIGHTS = (70, 8, 5, 4, 8, 5)
READ_WEIGHTS = (85, 0, 0, 0, 15, 0)


def owner_of(client_order_id: str) -> str:
    """The order a venue order belongs to: the client id without its replacement suffix."""
    return re.sub(r"-r\d+$", "", client_order_id)


def venue_error(kind: VenueErrorType, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind.value, non_retryable=True)


@dataclass
class VenueOrder:
    client_order_id: str
    quantity: Decimal
    limit_price: Decimal | None
    order_type: OrderType
    status: VenueOrderStatus = VenueOrderStatus.NEW
    fills: list[VenueFill] = field(default_factory=list)

    @property
    def filled(self) -> Decimal:
        return sum((f.quantity for f in self.fills), Decimal(0))

    @property
    def live(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass
class Step:
    """One scripted call: its outcome, and an effect on the venue's order before it answers."""

    outcome: str = "ok"  # one of OUTCOMES, or "ignore": answered without acting (a cancel that did not take)
    effect: Callable[["ScriptedVenue", VenueOrder | None], None] | None = None  # before acting
    after: Callable[["ScriptedVenue", VenueOrder], None] | None = None  # after acting, before answering
    fills_complete: bool = True
    delay_s: float = 0.0  # the answer takes this long (real time)
    lands_after: int = 1  # a delayed request reaches the venue with the n-th call after it
    answer_after_s: float = 0.0  # the venue acted; its answer takes this long to come back (real time)


class ScriptedVenue:
    def __init__(self, rng: random.Random | None = None, native_amend: bool = True) -> None:
        self.rng = rng
        self.native_amend = native_amend
        self.prepare_failures = 0  # preparations refused (transiently) before one succeeds
        self.placement_rule = None  # prepare_and_place's decision, if not order_to_place (a drifted worker)
        self.orders: dict[str, VenueOrder] = {}
        self.script: dict[str, deque[Step]] = defaultdict(deque)
        self.requests: Counter[str] = Counter()  # per order
        self.calls: Counter[str] = Counter()  # per method
        self.violations: list[str] = []
        self.calm = False  # answer everything, no surprises (the end of a model run)
        self._in_flight: list[tuple[int, Callable[[], None]]] = []
        self._trade = 0

    # --- the test's side --------------------------------------------------------------------------
    def queue(self, method: str, *steps: Step) -> None:
        self.script[method].extend(steps)

    def live_orders(self, owner: str) -> list[VenueOrder]:
        return [o for cid, o in self.orders.items() if owner_of(cid) == owner and o.live]

    def filled(self, owner: str) -> Decimal:
        return sum((o.filled for cid, o in self.orders.items() if owner_of(cid) == owner), Decimal(0))

    def fill(self, order: VenueOrder, quantity: Decimal | None = None) -> None:
        """The market trades against a live order (all of what is left by default)."""
        if not order.live:
            return
        left = order.quantity - order.filled
        quantity = left if quantity is None else min(quantity, left)
        if quantity <= 0:
            return
        self._trade += 1
        order.fills.append(VenueFill(trade_id=f"t{self._trade}", quantity=quantity,
                                     price=order.limit_price or Decimal("100"), fee=Decimal("0.01"),
                                     fee_currency="USDT", at=datetime.now(timezone.utc)))
        order.status = VenueOrderStatus.FILLED if order.filled >= order.quantity else VenueOrderStatus.PARTIALLY_FILLED

    def end(self, order: VenueOrder, status: VenueOrderStatus = VenueOrderStatus.CANCELLED) -> None:
        """The venue ends a live order itself (IOC remainder, self-trade prevention, expiry)."""
        if order.live:
            order.status = status

    def random_fill(self, owner: str) -> None:
        for order in self.live_orders(owner):
            left = order.quantity - order.filled
            steps = int(left / STEP)
            if steps > 0:
                self.fill(order, STEP * self.rng.randint(1, steps))

    def land_in_flight(self) -> None:
        """Requests still travelling reach the venue (the end of a run: nothing stays in the air)."""
        pending, self._in_flight = self._in_flight, []
        for _, deliver in pending:
            deliver()

    # --- answering --------------------------------------------------------------------------------
    def _step(self, method: str) -> Step:
        if self.script[method]:
            return self.script[method].popleft()
        if self.calm or self.rng is None:
            return Step()
        weights = READ_WEIGHTS if method == "fetch" else CHANGE_WEIGHTS
        return Step(outcome=self.rng.choices(OUTCOMES, weights)[0], fills_complete=self.rng.random() > 0.15)

    def _tick(self) -> None:
        """Delayed requests land with the lands_after-th call after them."""
        self._in_flight = [(n - 1, d) for n, d in self._in_flight]
        ready = [d for n, d in self._in_flight if n <= 0]
        self._in_flight = [(n, d) for n, d in self._in_flight if n > 0]
        for deliver in ready:
            deliver()

    def report(self, order: VenueOrder, fills_complete: bool = True) -> VenueOrderReport:
        fills = list(order.fills) if fills_complete else []
        if fills_complete and fills and self.rng is not None and self.rng.random() < 0.2:
            fills.append(fills[-1])  # the same trade listed twice: counted once
        return VenueOrderReport(exchange=EXCHANGE, client_order_id=order.client_order_id,
                                venue_order_id=f"v-{order.client_order_id}", symbol="BTC/USDT", status=order.status,
                                quantity=order.quantity, limit_price=order.limit_price, filled_quantity=order.filled,
                                fills=fills, fills_complete=fills_complete)

    async def _call(self, method: str, client_order_id: str, act: Callable[[], VenueOrderReport]) -> VenueOrderReport:
        self.requests[owner_of(client_order_id)] += 1
        self.calls[method] += 1
        self._tick()
        step = self._step(method)
        if step.delay_s:
            await asyncio.sleep(step.delay_s)
        if step.outcome == "ignore":
            act = lambda: self._fetch(VenueOrderRef(exchange=EXCHANGE, client_order_id=client_order_id,  # noqa: E731
                                                    symbol="BTC/USDT"))
        if step.outcome == "transient":
            raise venue_error(VenueErrorType.TRANSIENT, f"scripted: {method} refused the connection")
        if step.outcome == "lost_before":
            raise venue_error(VenueErrorType.UNKNOWN_OUTCOME, f"scripted: {method} request lost")
        if step.outcome == "delayed":
            self._in_flight.append((step.lands_after, lambda: self._quietly(act)))
            raise venue_error(VenueErrorType.UNKNOWN_OUTCOME, f"scripted: {method} timed out (still in flight)")
        if step.outcome == "refused" and method != "fetch":
            raise venue_error(VenueErrorType.REJECTED, f"scripted: {method} refused by the venue")
        if step.effect is not None:
            step.effect(self, self.orders.get(client_order_id))
        report = act()
        if step.after is not None and client_order_id in self.orders:
            step.after(self, self.orders[client_order_id])
            report = self.report(self.orders[client_order_id])
        if step.answer_after_s:
            await asyncio.sleep(step.answer_after_s)
        if step.outcome == "lost_after":
            raise venue_error(VenueErrorType.UNKNOWN_OUTCOME, f"scripted: {method} answer lost")
        if not step.fills_complete and report.status != VenueOrderStatus.NOT_FOUND:
            report = report.model_copy(update={"fills": [], "fills_complete": False})
        return report

    @staticmethod
    def _quietly(act: Callable[[], VenueOrderReport]) -> None:
        try:
            act()
        except ApplicationError:
            pass

    def _place(self, request: VenueOrderRequest) -> VenueOrderReport:
        existing = self.orders.get(request.client_order_id)
        if existing is not None:
            return self.report(existing)  # idempotent by client order id
        owner = owner_of(request.client_order_id)
        live = self.live_orders(owner)
        if live:
            self.violations.append(f"{request.client_order_id} placed while {live[0].client_order_id} is live")
        order = VenueOrder(request.client_order_id, request.quantity, request.limit_price, request.order_type)
        self.orders[request.client_order_id] = order
        if request.order_type == OrderType.MARKET or request.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            # Takes what the book has; the rest is ended (ccxt's `closed` short, or cancelled).
            self.random_fill(owner) if self.rng else self.fill(order)
            if order.live:
                self.end(order, self.rng.choice([VenueOrderStatus.CANCELLED, VenueOrderStatus.EXPIRED,
                                                 VenueOrderStatus.FILLED]) if self.rng else VenueOrderStatus.CANCELLED)
        return self.report(order)

    def _fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        order = self.orders.get(ref.client_order_id)
        if order is None:
            return VenueOrderReport(exchange=EXCHANGE, client_order_id=ref.client_order_id, symbol=ref.symbol,
                                    status=VenueOrderStatus.NOT_FOUND)
        return self.report(order)

    def _cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        order = self.orders.get(ref.client_order_id)
        if order is None:
            raise venue_error(VenueErrorType.NOT_FOUND, "scripted: unknown order")
        if order.live and self.rng is not None and not self.calm and self.rng.random() < 0.25:
            self.random_fill(owner_of(ref.client_order_id))  # a fill races the cancel
        self.end(order, VenueOrderStatus.CANCELLED)
        return self.report(order)

    def _amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        if not self.native_amend:
            raise venue_error(VenueErrorType.UNSUPPORTED, "scripted: no native amend")
        order = self.orders.get(request.client_order_id)
        if order is None or not order.live:
            raise venue_error(VenueErrorType.REJECTED, "scripted: order not open")
        if request.quantity is not None:
            if request.quantity <= order.filled:
                raise venue_error(VenueErrorType.REJECTED, "scripted: quantity below filled")
            order.quantity = request.quantity
        if request.limit_price is not None:
            order.limit_price = request.limit_price
        return self.report(order)

    # --- activities -------------------------------------------------------------------------------
    def activities(self, publish: PublishActivities, context: OrderContext, published: list) -> list:
        venue = self

        @activity.defn(name="prepare_order")
        async def prepare_order(signal: Signal) -> OrderContext:
            venue.calls["prepare"] += 1
            if venue.prepare_failures > 0:
                venue.prepare_failures -= 1
                # Retryable, as prepare_order raises a transient venue error (to_application_error).
                raise ApplicationError("scripted: the venue's market data is unavailable",
                                       type=VenueErrorType.TRANSIENT.value)
            return context

        async def submit(request: VenueOrderRequest) -> VenueOrderReport:
            return await venue._call("submit", request.client_order_id, lambda: venue._place(request))

        @activity.defn(name="venue_submit")
        async def venue_submit(request: VenueOrderRequest) -> VenueOrderReport:
            return await submit(request)

        @activity.defn(name="read_prices")
        async def read_prices(query: PriceQuery) -> VenuePrices:
            return context.prices

        @activity.defn(name="prepare_and_place")
        async def place_when_prepared(request: PlaceRequest) -> PreparedPlacement:
            # The real activity's logic (its decision, outcomes as data) on the scripted venue.
            return await prepare_and_place(request, prepare_order, submit, venue.placement_rule or order_to_place)

        @activity.defn(name="venue_fetch")
        async def venue_fetch(ref: VenueOrderRef) -> VenueOrderReport:
            return await venue._call("fetch", ref.client_order_id, lambda: venue._fetch(ref))

        @activity.defn(name="venue_cancel")
        async def venue_cancel(ref: VenueOrderRef) -> VenueOrderReport:
            return await venue._call("cancel", ref.client_order_id, lambda: venue._cancel(ref))

        @activity.defn(name="venue_amend")
        async def venue_amend(request: VenueAmendRequest) -> VenueOrderReport:
            return await venue._call("amend", request.client_order_id, lambda: venue._amend(request))

        @activity.defn(name="record_progress")
        async def record_progress(progress: OrderProgress) -> int:
            published.append(progress)
            return await publish.record_progress(progress)

        return [prepare_order, place_when_prepared, read_prices, venue_submit, venue_fetch, venue_cancel, venue_amend,
                record_progress]


def scripted_context(settings, current_rules: bool = False, **params) -> OrderContext:
    """The prepared context every scripted order gets. Without `current_rules` it has no prices, as
    release 0.1 recorded it: the workflow then keeps that release's validation and amend rules, and
    preparation never places the order (prepare_and_place needs prices). With them, today's paths."""
    market = MarketInfo(symbol="BTC/USDT", base="BTC", quote="USDT", amount_step=STEP, price_step=STEP)
    prices = VenuePrices(account_currency=settings.account_limits.currency, bid=Decimal("99.99"),
                         ask=Decimal("100.01"), conversion_price=Decimal(1)) if current_rules else None
    return OrderContext(params=settings.orders.model_copy(update=params), limits=settings.account_limits,
                        mode="simulation", exchange=EXCHANGE, market=market, bid=Decimal("99.99"),
                        ask=Decimal("100.01"), daily_decision=DailyOrderDecision(allowed=True, count=1), prices=prices)
