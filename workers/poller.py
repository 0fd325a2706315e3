"""Fill tracking that scales: one poller per exchange account, not one poll per order.

Every `interval` it asks the venue for all open orders of the account in one call
(`fetch_open`), compares each with what it saw last, and signals `venue_update` to the workflows
whose order changed. Orders that left the open set since the last round (filled or cancelled in
between) are fetched once by client order id and signalled too. The workflows keep their own
polling with backoff (up to 5 minutes) as the fallback, so a dead poller delays fills, never loses
them. With several worker replicas, a Redis lease makes one of them poll each account.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from temporalio.client import Client
from temporalio.service import RPCError

from activities.venues import VenueError, VenueRegistry
from oms.events import client_order_key
from oms.venue import OPEN_STATUSES, VenueOrderRef, VenueOrderReport

log = logging.getLogger("tom.poller")
LEASE_S = 10


def _fingerprint(report: VenueOrderReport) -> tuple:
    return report.status, report.filled_quantity, len(report.fills), report.quantity, report.limit_price


class AccountPoller:
    def __init__(self, client: Client, redis: aioredis.Redis, registry: VenueRegistry, exchange: str,
                 account: str = "default", interval_s: float = 1.0) -> None:
        self._client, self._redis, self._registry = client, redis, registry
        self.exchange, self.account, self.interval_s = exchange, account, interval_s
        self._seen: dict[str, tuple] = {}
        self._symbols: dict[str, str] = {}
        self._lease_key = f"poller:lease:{exchange}:{account}"
        self._me = f"{socket.gethostname()}-{os.getpid()}-{id(self)}"
        self.signals_sent = 0
        self.rounds = 0

    def round_interval_s(self) -> float:
        """The configured interval, or longer where one listing is heavy against the venue's limit."""
        adapter = self._registry.get(self.exchange)
        return max(self.interval_s, getattr(adapter, "min_poll_interval_s", 0.0))

    async def _hold_lease(self) -> bool:
        """Take or renew the account's lease; only its holder polls."""
        if await self._redis.set(self._lease_key, self._me, nx=True, ex=LEASE_S):
            return True
        if await self._redis.get(self._lease_key) == self._me:
            await self._redis.expire(self._lease_key, LEASE_S)
            return True
        return False

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

    async def poll_once(self) -> int:
        adapter = self._registry.get(self.exchange)
        reports = {r.client_order_id: r for r in await adapter.fetch_open(self.account)}
        for gone in set(self._seen) - set(reports):  # left the open set between two rounds
            ref = VenueOrderRef(exchange=self.exchange, account=self.account, client_order_id=gone,
                                symbol=self._symbols[gone])
            reports[gone] = await adapter.fetch(ref)
        changed = [r for cid, r in reports.items() if self._seen.get(cid) != _fingerprint(r)]
        self._seen = {cid: _fingerprint(r) for cid, r in reports.items() if r.status in OPEN_STATUSES}
        self._symbols = {cid: r.symbol for cid, r in reports.items() if cid in self._seen}
        sent = 0
        for report in changed:
            order_id = await self._redis.get(client_order_key(report.client_order_id))
            if order_id is None:
                continue
            try:
                await self._client.get_workflow_handle(order_id).signal("venue_update", report)
                sent += 1
            except RPCError:  # the workflow already finished
                continue
        self.rounds += 1
        self.signals_sent += sent
        return sent


async def run_pollers(client: Client, redis: aioredis.Redis, registry: VenueRegistry, accounts: list[tuple[str, str]],
                      stop: asyncio.Event, interval_s: float = 1.0) -> None:
    pollers = [AccountPoller(client, redis, registry, exchange, account, interval_s) for exchange, account in accounts]
    await asyncio.gather(*(p.run(stop) for p in pollers))
