"""The request log, and the rates computed from it.

Every venue request is logged once its outcome is known, stamped with its arrival time
(`time.monotonic()`, one clock for all processes of a machine, so a test can compare it with its
own), whatever the outcome: a venue counts what it receives, refused requests included. Window
statistics are exact sliding windows: the most arrivals lying less than W ms apart.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

PLACEMENT_CLASSES = frozenset({"create", "amend"})


@dataclass(frozen=True)
class Entry:
    at: float  # time.monotonic() on arrival, seconds
    api_key: str | None  # the key the request presented (None: public endpoint or no key)
    endpoint: str  # "POST /api/v3/order"
    endpoint_class: str  # create | cancel | amend | query | market
    signed: bool
    status: int  # HTTP status answered; 0 when the connection was dropped without an answer
    outcome: str  # "ok", a fault kind, or "banned" (arrived during a ban)
    weight: int = 1  # the venue's request weight (Binance)


def max_in_window(times: list[float], window_s: float) -> int:
    """The largest number of `times` (sorted) within any half-open window of `window_s`."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


class RollingCounter:
    """A running total over the last `window_s` seconds (for the venues' usage headers)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, now: float, amount: int = 1) -> int:
        self._items.append((now, amount))
        self._total += amount
        return self.total(now)

    def total(self, now: float) -> int:
        while self._items and now - self._items[0][0] >= self.window_s:
            self._total -= self._items.popleft()[1]
        return self._total

    def oldest(self) -> float | None:
        return self._items[0][0] if self._items else None


class Traffic:
    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self._counters: dict[tuple[str, str | None], RollingCounter] = {}

    def record(self, entry: Entry) -> None:
        self.entries.append(entry)

    def counter(self, name: str, api_key: str | None, window_s: float) -> RollingCounter:
        """A named running total (a venue's usage header), per key; cleared with the log."""
        return self._counters.setdefault((name, api_key), RollingCounter(window_s))

    def clear(self) -> None:
        self.entries.clear()
        self._counters.clear()

    def stats(self, window_ms: float) -> dict[str, Any]:
        window_s = window_ms / 1000
        placements: dict[str | None, list[float]] = {}
        signed: dict[str | None, list[float]] = {}
        for e in self.entries:
            if e.signed:
                signed.setdefault(e.api_key, []).append(e.at)
                if e.endpoint_class in PLACEMENT_CLASSES:
                    placements.setdefault(e.api_key, []).append(e.at)
        return {
            "requests": len(self.entries),
            "by_endpoint": dict(Counter(e.endpoint for e in self.entries)),
            "by_class": dict(Counter(e.endpoint_class for e in self.entries)),
            "by_status": {str(k): v for k, v in Counter(e.status for e in self.entries).items()},
            "window_ms": window_ms,
            "max_orders_in_window": max((max_in_window(sorted(t), window_s) for t in placements.values()),
                                        default=0),
            "max_requests_in_window": max((max_in_window(sorted(t), window_s) for t in signed.values()),
                                          default=0),
            "requests_during_ban": sum(1 for e in self.entries if e.outcome == "banned"),
            "rate_limited": sum(1 for e in self.entries if e.outcome == "rate_limit"),
            "faults_fired": dict(Counter(e.outcome for e in self.entries if e.outcome not in ("ok", "banned"))),
        }

    def log(self) -> list[list[Any]]:
        return [[round(e.at * 1000, 3), e.endpoint_class, e.status]
                for e in sorted(self.entries, key=lambda e: e.at)]
