"""What the server needs from a venue module, and the state they share.

A venue module (binance, bybit) declares its routes with an endpoint class each (what faults and
statistics key on) and answers the fault responses in its own wire format; everything else about a
request (fault firing, ban, latency, logging, usage headers) is done once, in `server`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Protocol

from aiohttp import web

from emulator.book import Book
from emulator.faults import BanState, FaultSchedule
from emulator.traffic import Entry, Traffic

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Emulator:
    """One emulated venue account: credentials, the book, and the request machinery's state."""

    venue: str
    api_key: str
    secret: str
    book: Book
    traffic: Traffic = field(default_factory=Traffic)
    faults: FaultSchedule = field(default_factory=FaultSchedule)
    ban: BanState = field(default_factory=BanState)

    def reset(self) -> None:
        self.book.reset()
        self.traffic.clear()
        self.faults.clear()
        self.ban.clear()


EMULATOR = web.AppKey("emulator", Emulator)  # the app's Emulator, for the admin API


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    endpoint_class: str  # create | cancel | amend | query | market
    handler: Handler
    signed: bool = False
    weight: int = 1

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


class Venue(Protocol):
    def routes(self) -> list[Route]: ...

    def api_key(self, request: web.Request) -> str | None: ...

    def rate_limited(self, retry_after_s: int) -> web.Response: ...

    def banned(self, until_ms: int, retry_after_s: int) -> web.Response: ...

    def rejected(self) -> web.Response: ...

    def usage_headers(self, entry: Entry, now: float) -> dict[str, str]: ...


def server_error(status: int) -> web.Response:
    """What a venue's gateway answers when the backend fails: not JSON, so clients see the status."""
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
              504: "Gateway Timeout"}.get(status, "Server Error")
    return web.Response(status=status, text=f"<html><body><h1>{status} {reason}</h1></body></html>",
                        content_type="text/html")


def parse_decimal(raw: str | None) -> Decimal | None:
    """A positive decimal as venues send it ("0.001"); None when absent; ValueError when malformed."""
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(raw) from None
    if not value.is_finite() or value <= 0:
        raise ValueError(raw)
    return value
