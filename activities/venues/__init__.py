"""The adapter interface every venue implements, and the per-process registry of adapters.

Activities in `activities/execution.py` look the adapter up by `exchange` name, so the workflow is
the same whether an order goes to the simulated venue, Binance or Bybit through ccxt, or QuantConnect.
Adapters raise `VenueError` with a `VenueErrorType`; the activity layer turns it into an
`ApplicationError` the workflow's retry policy understands.
"""
from __future__ import annotations

from typing import Any, Protocol

from oms.venue import (
    MarketInfo,
    VenueAmendRequest,
    VenueErrorType,
    VenueOrderRef,
    VenueOrderReport,
    VenueOrderRequest,
)


class VenueError(Exception):
    def __init__(self, kind: VenueErrorType, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after_s = retry_after_s


class VenueAdapter(Protocol):
    name: str

    async def market(self, symbol: str) -> MarketInfo:
        """Constraints of one symbol; raises VenueError(REJECTED) for an unknown symbol."""

    async def submit(self, request: VenueOrderRequest) -> VenueOrderReport:
        """Place the order. Idempotent by client_order_id: placing it twice returns the first."""

    async def fetch(self, ref: VenueOrderRef) -> VenueOrderReport:
        """The order's current state and all its fills; status NOT_FOUND if the venue never got it."""

    async def cancel(self, ref: VenueOrderRef) -> VenueOrderReport:
        """Cancel; cancelling a finished order returns its final report, not an error."""

    async def amend(self, request: VenueAmendRequest) -> VenueOrderReport:
        """Native amend; raises VenueError(UNSUPPORTED) where the venue has none."""

    async def fetch_open(self, account: str, symbols: list[str] | None = None) -> list[VenueOrderReport]:
        """All open orders of an account: one call for the batched fill poller."""

    async def fetch_closed_since(self, account: str, since_ms: int) -> list[VenueOrderReport]:
        """Orders of the account that closed (or traded) at or after `since_ms`, without their trades
        (`fills_complete` false): the poller's catch-up for orders that ended between two listings."""

    async def close(self) -> None: ...


class VenueRegistry:
    """One adapter per exchange name in this worker process (pooled clients live in the adapters)."""

    def __init__(self, adapters: dict[str, VenueAdapter] | None = None, redis: Any = None) -> None:
        self._adapters: dict[str, VenueAdapter] = {}
        self._redis = redis  # where venue calls are counted (activities/venues/metering.py); None: not counted
        for adapter in (adapters or {}).values():
            self.register(adapter)

    def register(self, adapter: VenueAdapter) -> None:
        from activities.venues.metering import MeteredVenue  # every venue call counted (by venue, kind)

        self._adapters[adapter.name] = MeteredVenue(adapter, self._redis)

    def get(self, exchange: str) -> VenueAdapter:
        try:
            return self._adapters[exchange]
        except KeyError:
            raise VenueError(VenueErrorType.REJECTED, f"unknown exchange {exchange!r}") from None

    @property
    def names(self) -> list[str]:
        return sorted(self._adapters)

    async def close(self) -> None:
        for adapter in self._adapters.values():
            await adapter.close()
