"""Injected faults (set through POST /_emulator/faults) and the venue's ban state.

A fault fires on requests of the endpoint classes it names: `count` times (one-shot, the default)
or, with `rate`, on that fraction of them until the faults are cleared. When several faults match a
request, the oldest fires. The seeded random generator keeps a `rate` schedule reproducible.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

ENDPOINT_CLASSES = ("create", "cancel", "amend", "query", "market")
FAULT_KINDS = (
    "rate_limit",  # 429 / retCode 10006; the request is not processed
    "ban",  # 418 / 403; every request is refused until the ban ends
    "server_error",  # 5xx before processing: nothing happened
    "server_error_after",  # processed, then answered with a 5xx
    "timeout_after_accept",  # processed, then the answer is held for delay_ms
    "drop_after_accept",  # processed, then the connection is closed without an answer
    "slow",  # wait delay_ms, then process normally (timestamps are checked after the wait)
    "reject",  # business rejection (insufficient balance) without processing
)
_DEFAULT_DELAY_MS = {"timeout_after_accept": 60_000, "slow": 1_000}


@dataclass
class Fault:
    kind: str
    endpoints: frozenset[str]
    count: int | None = 1  # firings left; None when `rate` drives it
    rate: float | None = None
    delay_ms: int = 0
    retry_after_s: int = 1
    ban_s: float = 10.0
    status: int = 503

    @classmethod
    def from_json(cls, data: Any) -> Fault:
        """Parse the admin API's JSON; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        unknown = set(data) - {"kind", "count", "rate", "endpoints", "delay_ms", "retry_after_s", "ban_s", "status"}
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        kind = data.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {list(FAULT_KINDS)}")
        endpoints = data.get("endpoints", ["create"])
        if not isinstance(endpoints, list) or not endpoints:
            raise ValueError("endpoints must be a non-empty list")
        if "any" in endpoints:
            endpoints = list(ENDPOINT_CLASSES)
        bad = [e for e in endpoints if e not in ENDPOINT_CLASSES]
        if bad:
            raise ValueError(f"unknown endpoints {bad}; use {list(ENDPOINT_CLASSES)} or 'any'")
        rate = data.get("rate")
        count = data.get("count", None if rate is not None else 1)
        if rate is not None and not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
            raise ValueError("rate must be a probability between 0 and 1")
        if count is not None and not (isinstance(count, int) and count >= 1):
            raise ValueError("count must be a positive integer")
        status = data.get("status", 503)
        if not (isinstance(status, int) and 500 <= status <= 599):
            raise ValueError("status must be a 5xx code")
        return cls(
            kind=kind, endpoints=frozenset(endpoints), count=count, rate=rate,
            delay_ms=int(data.get("delay_ms", _DEFAULT_DELAY_MS.get(kind, 0))),
            retry_after_s=int(data.get("retry_after_s", 1)), ban_s=float(data.get("ban_s", 10.0)),
            status=status,
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "endpoints": sorted(self.endpoints), "count": self.count,
                "rate": self.rate, "delay_ms": self.delay_ms, "retry_after_s": self.retry_after_s,
                "ban_s": self.ban_s, "status": self.status}


class FaultSchedule:
    def __init__(self, seed: int = 0) -> None:
        self._faults: list[Fault] = []
        self._random = random.Random(seed)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]

    def take(self, endpoint_class: str) -> Fault | None:
        """The fault that fires on this request, if any (a one-shot fault is used up)."""
        for fault in self._faults:
            if endpoint_class not in fault.endpoints:
                continue
            if fault.rate is not None and self._random.random() >= fault.rate:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            return fault
        return None


@dataclass
class BanState:
    """An IP ban: while it lasts, every venue request is refused (and counted)."""

    until_monotonic: float = 0.0
    until_ms: int = 0
    history: list[list[int]] = field(default_factory=list)  # [[start_ms, end_ms]] wall clock

    def start(self, seconds: float) -> None:
        now_ms = int(time.time() * 1000)
        self.until_monotonic = time.monotonic() + seconds
        self.until_ms = now_ms + int(seconds * 1000)
        self.history.append([now_ms, self.until_ms])

    def active(self, now_monotonic: float) -> bool:
        return now_monotonic < self.until_monotonic

    def retry_after_s(self, now_monotonic: float) -> int:
        return max(1, int(self.until_monotonic - now_monotonic + 0.999))

    def lift(self) -> None:
        """End a ban early; its record stays in `history`."""
        self.until_monotonic, self.until_ms = 0.0, 0

    def clear(self) -> None:
        self.lift()
        self.history.clear()
