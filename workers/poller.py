"""Fill tracking that scales: one poller per exchange account, not one poll per order.

Every `interval` it asks the venue for all open orders of the account in one call
(`fetch_open`), compares each with what it saw last, and signals `venue_update` to the workflows
whose order changed. Orders that left the open set since the last round (filled or cancelled in
between) are fetched once by client order id and signalled too. An order no workflow has recorded
(yet: the listing crossed the venue's answer; or ever: placed outside the platform) is not marked
seen, so it is signalled once a workflow owns it and never fetched for nobody. An order that opened and closed
between two listings is never in the open set: a catch-up listing of orders closed since a cursor
(`fetch_closed_since`, every CATCH_UP_S) finds it.

What the poller saw (open orders with their fingerprints) and the cursor live in Redis, so the next
leaseholder after a failover continues where the last one stopped: nothing seen open is forgotten,
and the catch-up starts from the last round that completed. State is written only after a round's
signals went out, so a crash re-signals (workflows apply a report idempotently), never skips.

The workflows keep their own polling with backoff as the fallback, so a dead poller delays fills,
never loses them. With several worker replicas, a Redis lease makes one of them poll each account.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.service import RPCError

from activities.venues import VenueError, VenueRegistry
from oms.events import client_order_key, order_cache_key
from oms.models import TERMINAL_STATES
from oms.venue import OPEN_STATUSES, VenueOrderRef, VenueOrderReport
from workers.lease import Lease

log = logging.getLogger("tom.poller")
LEASE_S = 10
CATCH_UP_S = 5.0  # closed-orders listing at most this often (Binance: one weighty call per symbol)
CURSOR_OVERLAP_MS = 5_000  # clock skew between us and the venue, and a listing's own duration
# After a long stop, look back at most this far (orders seen open before it are in the seen set;
# nothing can have been placed while no worker ran), inside Binance allOrders' 24 h time window.
CATCH_UP_MAX_MS = 12 * 3_600_000
ENDED_TTL_S = 3600  # how long an ended order's last signalled state is remembered (de-duplication)


def _fingerprint(report: VenueOrderReport) -> str:
    return json.dumps([report.status.value, str(report.filled_quantity), len(report.fills),
                       str(report.quantity), str(report.limit_price)])


def _now_ms() -> int:
    return int(time.time() * 1000)


class AccountPoller:
    def __init__(self, client: Client, redis: aioredis.Redis, registry: VenueRegistry, exchange: str,
                 account: str = "default", interval_s: float = 1.0, catch_up_s: float = CATCH_UP_S) -> None:
        self._client, self._redis, self._registry = client, redis, registry
        self.exchange, self.account, self.interval_s, self.catch_up_s = exchange, account, interval_s, catch_up_s
        prefix = f"poller:{exchange}:{account}"
        self._lease = Lease(redis, f"poller:lease:{exchange}:{account}")
        self._seen_key = f"{prefix}:seen"  # hash: client order id -> {"fp", "symbol"} of open orders
        self._cursor_key = f"{prefix}:cursor"  # ms: the catch-up listing starts here (less the overlap)
        self._ended_prefix = f"{prefix}:ended:"  # per ended order: the fingerprint last signalled
        self._last_catch_up = 0.0
        self.signals_sent = 0
        self.rounds = 0

    def round_interval_s(self) -> float:
        """The configured interval, or longer where one listing is heavy against the venue's limit."""
        adapter = self._registry.get(self.exchange)
        return max(self.interval_s, getattr(adapter, "min_poll_interval_s", 0.0))

    async def _hold_lease(self) -> bool:
        """Take or renew the account's lease; only its holder polls."""
        return await self._lease.hold(LEASE_S)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self._hold_lease():
                    await self.poll_once()
            except (VenueError, OSError, RPCError, RedisError) as exc:
                log.warning("poller %s/%s: %s", self.exchange, self.account, exc)
            try:
                await asyncio.wait_for(stop.wait(), self.round_interval_s())
            except asyncio.TimeoutError:
                pass

    async def poll_once(self, catch_up: bool | None = None) -> int:
        """One round; `catch_up` forces (or skips) the closed-orders listing, else every catch_up_s."""
        started_ms = _now_ms()
        adapter = self._registry.get(self.exchange)
        seen = {cid: json.loads(raw) for cid, raw in (await self._redis.hgetall(self._seen_key)).items()}
        reports = {r.client_order_id: r for r in await adapter.fetch_open(self.account)}
        changed = [r for cid, r in reports.items() if seen.get(cid, {}).get("fp") != _fingerprint(r)]
        for gone in set(seen) - set(reports):  # left the open set since the last round
            ref = VenueOrderRef(exchange=self.exchange, account=self.account, client_order_id=gone,
                                symbol=seen[gone]["symbol"])
            report = await adapter.fetch(ref)
            reports[gone] = report
            changed.append(report)
        caught_up = catch_up if catch_up is not None else time.monotonic() - self._last_catch_up >= self.catch_up_s
        if caught_up:
            cursor = await self._redis.get(self._cursor_key)
            since = max(int(cursor) if cursor else started_ms, started_ms - CATCH_UP_MAX_MS) - CURSOR_OVERLAP_MS
            for report in await adapter.fetch_closed_since(self.account, since):
                if report.client_order_id not in reports:
                    reports[report.client_order_id] = report
                    changed.append(report)
        ended = [r for r in changed if r.status not in OPEN_STATUSES]
        if ended:  # an ended order is signalled once per state, across rounds and leaseholders
            last = await self._redis.mget([self._ended_prefix + r.client_order_id for r in ended])
            repeat = {r.client_order_id for r, fp in zip(ended, last) if fp == _fingerprint(r)}
            changed = [r for r in changed if r.client_order_id not in repeat]
        sent, unmapped = await self._signal(changed)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._seen_key)
            # An order listed before its workflow recorded its client order id (the venue's answer
            # and the listing crossed) is not marked seen, so the next round signals it.
            still_open = {cid: json.dumps({"fp": _fingerprint(r), "symbol": r.symbol})
                          for cid, r in reports.items() if r.status in OPEN_STATUSES and cid not in unmapped}
            if still_open:
                pipe.hset(self._seen_key, mapping=still_open)
            for report in changed:
                if report.status not in OPEN_STATUSES:
                    pipe.set(self._ended_prefix + report.client_order_id, _fingerprint(report), ex=ENDED_TTL_S)
            if caught_up or not await self._redis.exists(self._cursor_key):
                pipe.set(self._cursor_key, started_ms)  # the next catch-up, here or elsewhere, starts here
            await pipe.execute()
        if caught_up:
            self._last_catch_up = time.monotonic()
        self.rounds += 1
        self.signals_sent += sent
        return sent

    async def _signal(self, reports: list[VenueOrderReport]) -> tuple[int, set[str]]:
        """Signal each report to its order's workflow; returns the signals sent, and the client order
        ids no workflow has recorded (yet, or ever: an order placed outside the platform)."""
        if not reports:
            return 0, set()
        # Two batched reads for the whole round, not two per order: at load, most listed orders
        # ended in their own workflow a moment ago.
        order_ids = await self._redis.mget([client_order_key(r.client_order_id) for r in reports])
        ended = [order_id for r, order_id in zip(reports, order_ids)
                 if order_id is not None and r.status not in OPEN_STATUSES]
        cached = dict(zip(ended, await self._redis.mget([order_cache_key(o) for o in ended]))) if ended else {}
        sent, unmapped = 0, set()
        for report, order_id in zip(reports, order_ids):
            if order_id is None:
                unmapped.add(report.client_order_id)
                continue
            if report.status not in OPEN_STATUSES and _known_terminal(cached.get(order_id)):
                continue  # most closed orders ended in their own workflow already: spare the RPC
            try:
                await self._client.get_workflow_handle(order_id).signal("venue_update", report)
                sent += 1
            except RPCError:  # the workflow already finished
                continue
        return sent, unmapped


def _known_terminal(cached_snapshot: str | None) -> bool:
    """Whether the order cache holds the order as ended (its state read, not the whole snapshot)."""
    return cached_snapshot is not None and json.loads(cached_snapshot).get("state") in TERMINAL_STATES


async def run_pollers(client: Client, redis: aioredis.Redis, registry: VenueRegistry, accounts: list[tuple[str, str]],
                      stop: asyncio.Event, interval_s: float = 1.0) -> None:
    pollers = [AccountPoller(client, redis, registry, exchange, account, interval_s) for exchange, account in accounts]
    await asyncio.gather(*(p.run(stop) for p in pollers))
