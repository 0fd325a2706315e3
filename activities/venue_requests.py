"""Venue requests, counted by venue and kind (Prometheus `tom_venue_requests_total`).

Every adapter call that reaches a venue goes through `MeteredVenue` (the registry hands out only
metered adapters), so the cost of each open order, the poller's rounds and the orphan sweep are
measured in one place whatever the adapter. Kinds: submit, fetch, cancel, amend, list_open,
list_closed. An adapter may make more than one HTTP request per call (a fetch that also reads the
order's trades); the counter counts calls, the unit a workflow or a poller spends.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from workers.metrics import REGISTRY

VENUE_REQUESTS = Counter("tom_venue_requests", "Venue requests by venue and kind", ["exchange", "kind"],
                         registry=REGISTRY)
_KINDS = {"submit": "submit", "fetch": "fetch", "cancel": "cancel", "amend": "amend", "fetch_open": "list_open",
          "fetch_closed_since": "list_closed"}


def venue_requests(exchange: str, kind: str) -> float:
    """Requests of one kind sent to `exchange` by this process so far."""
    return VENUE_REQUESTS.labels(exchange=exchange, kind=kind)._value.get()


class MeteredVenue:
    """An adapter whose venue calls are counted; everything else passes through unchanged."""

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter

    @property
    def unwrapped(self) -> Any:
        return self._adapter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        kind = _KINDS.get(name)
        if kind is None:
            return attribute
        counter = VENUE_REQUESTS.labels(exchange=self._adapter.name, kind=kind)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            counter.inc()
            return await attribute(*args, **kwargs)

        return counted
