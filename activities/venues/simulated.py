"""The simulated venue adapter: `oms.venue_model` matching with its orders kept in Redis.

Orders live outside the worker's memory, so a worker killed mid-submit or mid-fill reconciles
against the same venue state after restart. One key per client order id, created with SET NX:
submitting the same client order id twice returns the first order (exactly one order per id).

Fault injection for tests and chaos runs, read from the Redis hash `sim:faults` on every call (so a
test can change it while workers run) on top of `execution.simulation.faults`:
  reject_next / lost_ack_next / hang_next   one-shot counters, decremented as they fire
  reject_rate / lost_ack_rate / timeout_rate   probabilities 0..1
`lost_ack`: the order is placed and the answer lost (VenueUnknownOutcome). `hang`/`timeout`: the
order is placed, then the call never answers (the activity's start-to-close timeout fires).
  amend_lost_ack_next   one-shot: an amend is applied and its answer lost (VenueUnknownOutcome)
"""
from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timezone
from decimal import ROUND_DOWN, Decimal

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from config.settings import SimulationSettings
from oms import venue_model
from oms.markets import simulated_market
from oms.models import Side
from oms.venue import (
    MarketInfo,
    MarketQuote,
    VenueAmendRequest,
    VenueErrorType,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
    VenueOrderStatus,
)
from activities.venues import VenueError
from oms.venue_status import StatusRule, resolve

FAULTS_KEY = "sim:faults"
REQUESTS_KEY = "sim:requests"
HANG_SECONDS = 3600.0
LISTING_SLICE = 50  # orders read and parsed per round trip when listing
CLOSED_KEPT_MS = 86_400_000  # closed orders listed for the poller's catch-up this long

# Atomically take one from a one-shot counter: returns 1 if it fired.
_TAKE_ONE = """
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n > 0 then redis.call('HINCRBY', KEYS[1], ARGV[1], -1) return 1 end
return 0
"""


# The simulated venue's statuses (oms.venue_model keeps them as VenueOrderStatus values). A market,
# IOC or FOK remainder the book could not fill ends `expired`, with the fills it got.
SIM_STATUS: dict[str, StatusRule] = {
    VenueOrderStatus.NEW.value: StatusRule.OPEN, VenueOrderStatus.PARTIALLY_FILLED.value: StatusRule.OPEN,
    VenueOrderStatus.FILLED.value: StatusRule.FILLED, VenueOrderStatus.CANCELLED.value: StatusRule.CANCELLED,
    VenueOrderStatus.EXPIRED.value: StatusRule.EXPIRED, VenueOrderStatus.REJECTED.value: StatusRule.REJECTED,
}


def sim_report(order: venue_model.SimOrder, name: str = "simulation") -> VenueOrderReport:
    """The venue model's order as a report, its status through the table."""
    report = venue_model.to_report(order)
    status, reason = resolve(SIM_STATUS, name, order.status.value, report.filled_quantity, order.quantity)
    return report.model_copy(update={"status": status, "reason": report.reason or reason})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class SimulatedVenue:
    name = "simulation"

    def __init__(self, redis: aioredis.Redis, sim: SimulationSettings, name: str = "simulation") -> None:
        self.name = name  # more simulated venues (execution.simulation.venues) differ by fees and depth
        self._redis = redis
        self._sim = sim
        self._take_one = redis.register_script(_TAKE_ONE)

    # --- keys -----------------------------------------------------------------------------------
    def _order_key(self, client_order_id: str) -> str:
        return f"sim:{self.name}:order:{client_order_id}"

    def _open_key(self, account: str) -> str:
        return f"sim:{self.name}:open:{account}"

    def _closed_key(self, account: str) -> str:
        """Sorted set: client order id by the time (ms) the order closed, for `fetch_closed_since`."""
        return f"sim:{self.name}:closed:{account}"

    # --- plumbing -------------------------------------------------------------------------------
    async def _enter(self) -> None:
        await self._redis.incr(REQUESTS_KEY)
        if self._sim.delay_ms:
            await asyncio.sleep(self._sim.delay_ms / 1000)

    async def _enter_reading_faults(self) -> dict[str, str]:
        """`_enter` for a submission or an amend, reading the injected faults in the same round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(REQUESTS_KEY)
            pipe.hgetall(FAULTS_KEY)
            _, faults = await pipe.execute()
        if self._sim.delay_ms:
            await asyncio.sleep(self._sim.delay_ms / 1000)
        return faults

    async def _fault(self, kind: str, faults: dict[str, str]) -> bool:
        """Whether fault `kind` (reject | lost_ack | hang) fires on this call. `faults` is the fault
        hash as read when the call arrived: a one-shot counter seen there is taken atomically (two
        workers never both fire one), and an order with no fault injected costs no more reads."""
        if int(faults.get(f"{kind}_next") or 0) > 0 and await self._take_one(keys=[FAULTS_KEY], args=[f"{kind}_next"]):
            return True
        rate_name = "timeout_rate" if kind == "hang" else f"{kind}_rate"
        override = faults.get(rate_name)
        rate = float(override) if override is not None else getattr(self._sim.faults, rate_name)
        return rate > 0 and random.random() < rate

    async def _load(self, client_order_id: str) -> venue_model.SimOrder | None:
        raw = await self._redis.get(self._order_key(client_order_id))
        return venue_model.SimOrder.model_validate_json(raw) if raw else None

    async def _update(self, client_order_id: str, change) -> venue_model.SimOrder:
        """Read-modify-write one order under WATCH so concurrent workers never lose an update."""
        key = self._order_key(client_order_id)
        while True:
            async with self._redis.pipeline() as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise VenueError(VenueErrorType.NOT_FOUND, f"no order {client_order_id}")
                    order = change(venue_model.SimOrder.model_validate_json(raw))
                    pipe.multi()
                    pipe.set(key, order.model_dump_json())
                    if not order.is_open:
                        pipe.srem(self._open_key(order.account), client_order_id)
                        pipe.zadd(self._closed_key(order.account), {client_order_id: _ms(_now())}, nx=True)
                    await pipe.execute()
                    return order
                except WatchError:
                    continue

    # --- VenueAdapter ---------------------------------------------------------------------------
    async def market(self, symbol: str) -> MarketInfo:
        market = simulated_market(symbol)
        if market is None:
            raise VenueError(VenueErrorType.REJECTED, f"unknown symbol {symbol} on {self.name}")
        return market.model_copy(
            update={"maker_fee": Decimal(repr(self._sim.maker_fee)),
                    "taker_fee": Decimal(repr(self._sim.taker_fee))}
        )

    async def quote(self, symbol: str) -> MarketQuote:
        market = await self.market(symbol)
        now = _now()
        bid, ask = venue_model.top_of_book(symbol, now, self._sim)
        return MarketQuote(market=market, bid=bid, ask=ask, at=now)

    async def order_book(self, symbol: str, depth: int) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """(bids, asks) now, best first, at most `depth` levels a side (the model's book, for routing)."""
        market = await self.market(symbol)
        now = _now()
        step = market.amount_step

        def side(taker: Side) -> list[tuple[Decimal, Decimal]]:
            return [(price, (size / step).to_integral_value(ROUND_DOWN) * step)
                    for price, size in venue_model.book_side(symbol, taker, now, self._sim)[:depth]]

        return side(Side.SELL), side(Side.BUY)

    async def submit(self, request: VenueOrderRequest) -> VenueOrderReport:
        faults = await self._enter_reading_faults()
        if await self._fault("reject", faults):
            raise VenueError(VenueErrorType.REJECTED, "simulated rejection (fault injection)")
        existing = await self._load(request.client_order_id)
        if existing is None:
            order = venue_model.submit(request, uuid.uuid4().hex[:16], _now(), self._sim)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._order_key(request.client_order_id), order.model_dump_json(), nx=True)
                created, = await pipe.execute()
            if created and order.is_open:
                await self._redis.sadd(self._open_key(order.account), order.client_order_id)
            elif created:
                await self._redis.zadd(self._closed_key(order.account), {order.client_order_id: _ms(_now())})
            if not created:  # another worker placed it between our read and write
                order = await self._load(request.client_order_id)
        else:
            order = existing
        if await self._fault("lost_ack", faults):
            raise VenueError(VenueErrorType.UNKNOWN_OUTCOME, "simulated lost acknowledgement")
        if await self._fault("hang", faults):
            await asyncio.sleep(HANG_SECONDS)
        return sim_report(order, self.name)

    async def fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        await self._enter()
        if await self._load(ref.client_order_id) is None:
            return VenueOrderReport(exchange=self.name, client_order_id=ref.client_order_id,
                                    symbol=ref.symbol, status=VenueOrderStatus.NOT_FOUND)
        now = _now()
        order = await self._update(ref.client_order_id, lambda o: venue_model.advance(o, now, self._sim))
        return sim_report(order, self.name)

    async def cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        await self._enter()
        now = _now()
        order = await self._update(ref.client_order_id, lambda o: venue_model.cancel(o, now, self._sim))
        return sim_report(order, self.name)

    async def amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        faults = await self._enter_reading_faults()
        now = _now()

        def change(order: venue_model.SimOrder) -> venue_model.SimOrder:
            try:
                return venue_model.amend(order, request.quantity, request.limit_price, now, self._sim)
            except ValueError as exc:
                raise VenueError(VenueErrorType.REJECTED, f"amend refused: {exc}") from None

        order = await self._update(request.client_order_id, change)
        if int(faults.get("amend_lost_ack_next") or 0) > 0 and await self._take_one(
                keys=[FAULTS_KEY], args=["amend_lost_ack_next"]):
            raise VenueError(VenueErrorType.UNKNOWN_OUTCOME, "simulated lost acknowledgement of an amend")
        return sim_report(order, self.name)

    async def fetch_open(self, account: str, symbols: list[str] | None = None) -> list[VenueOrderReport]:
        await self._enter()
        now = _now()
        reports = []
        for client_order_id in await self._redis.smembers(self._open_key(account)):
            try:
                order = await self._update(client_order_id, lambda o: venue_model.advance(o, now, self._sim))
            except VenueError:
                continue
            if symbols is None or order.symbol in symbols:
                reports.append(sim_report(order, self.name))
        return reports

    async def fetch_closed_since(self, account: str, since_ms: int) -> list[VenueOrderReport]:
        await self._enter()
        key = self._closed_key(account)
        await self._redis.zremrangebyscore(key, "-inf", since_ms - CLOSED_KEPT_MS)  # bounded
        closed = await self._redis.zrangebyscore(key, since_ms, "+inf")
        reports = []
        # In slices, each its own read: a listing of thousands (a catch-up at load) would otherwise
        # parse them all in one step of the event loop the worker's workflows run on.
        for start in range(0, len(closed), LISTING_SLICE):
            raws = await self._redis.mget([self._order_key(cid) for cid in closed[start:start + LISTING_SLICE]])
            reports += [sim_report(venue_model.SimOrder.model_validate_json(raw), self.name) for raw in raws if raw]
        return reports

    async def close(self) -> None:
        return None
