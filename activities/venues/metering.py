"""Venue requests, counted by venue and kind: `tom_venue_requests_total` on the API's /metrics.

Every adapter call that reaches a venue goes through `MeteredVenue` (the registry hands out only
metered adapters), so the cost of each open order, the poller's rounds and the orphan sweep are
measured in one place whatever the adapter. Kinds: submit, fetch, cancel, amend, list_open,
list_closed. An adapter may make more than one HTTP request per call (a fetch that also reads the
order's trades); the counter counts calls, the unit a workflow or a poller spends.

The counts are kept in Redis (one hash, HINCRBY per call), so they add up across worker replicas
and restarts; the API process, which serves /metrics, reads them at scrape time.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from prometheus_client.core import CounterMetricFamily

from workers.metrics import REGISTRY

log = logging.getLogger("tom.venue.requests")
REQUESTS_KEY = "venue:requests"  # hash: "<exchange>|<kind>" -> calls
_KINDS = {"submit": "submit", "fetch": "fetch", "cancel": "cancel", "amend": "amend", "fetch_open": "list_open",
          "fetch_closed_since": "list_closed"}


async def venue_requests(redis: aioredis.Redis) -> dict[tuple[str, str], int]:
    """(exchange, kind) -> venue calls so far, across every worker."""
    totals = await redis.hgetall(REQUESTS_KEY)
    return {tuple(field.split("|", 1)): int(value) for field, value in totals.items()}  # type: ignore[misc]


class _VenueRequestTotals:
    """A Prometheus collector of the last totals read from Redis (collectors cannot await)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("tom_venue_requests", "Venue requests by venue and kind, all workers",
                                     labels=["exchange", "kind"])
        for (exchange, kind), value in sorted(self.totals.items()):
            family.add_metric([exchange, kind], value)
        yield family


TOTALS = _VenueRequestTotals()
REGISTRY.register(TOTALS)


async def observe_venue_requests(redis: aioredis.Redis) -> None:
    """Refresh `tom_venue_requests_total` from Redis (the API calls this at scrape time)."""
    TOTALS.totals = await venue_requests(redis)


class MeteredVenue:
    """An adapter whose venue calls are counted; everything else passes through unchanged."""

    def __init__(self, adapter: Any, redis: aioredis.Redis | None) -> None:
        self._adapter, self._redis = adapter, redis

    @property
    def unwrapped(self) -> Any:
        return self._adapter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        kind = _KINDS.get(name)
        if kind is None or self._redis is None:
            return attribute
        field, redis = f"{self._adapter.name}|{kind}", self._redis

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                await redis.hincrby(REQUESTS_KEY, field, 1)
            except (RedisError, OSError) as error:  # a measurement never stops a venue call
                log.warning("venue request not counted (%s): %s", field, error)
            return await attribute(*args, **kwargs)

        return counted
