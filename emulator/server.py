"""`tom exchange-emulator`: the HTTP server and the per-request fault machinery.

Every venue request goes through `_instrument`: refused while a ban lasts, else the first matching
injected fault fires (before or after the request is processed, see `faults.FAULT_KINDS`), then
it is logged with its outcome and answered with the venue's usage headers.

What the real ccxt 4.5.90 client raises for each fault, measured by tests/test_emulator.py:

| fault                 | binance (ccxt.async_support.binance)   | bybit (ccxt.async_support.bybit)       |
|-----------------------|----------------------------------------|----------------------------------------|
| rate_limit            | DDoSProtection (HTTP 429, -1003)       | RateLimitExceeded (retCode 10006)      |
| ban                   | DDoSProtection (HTTP 418, -1003)       | RateLimitExceeded (HTTP 403)           |
| server_error          | ExchangeNotAvailable (503, not JSON)   | ExchangeNotAvailable (503, not JSON)   |
| server_error_after    | ExchangeNotAvailable, order placed     | ExchangeNotAvailable, order placed     |
| timeout_after_accept  | RequestTimeout, order placed           | RequestTimeout, order placed           |
| drop_after_accept     | ExchangeNotAvailable, order placed     | ExchangeNotAvailable, order placed     |
| slow (past recvWindow)| InvalidNonce (-1021)                   | InvalidNonce (retCode 10002)           |
| reject                | InsufficientFunds (-2010)              | InsufficientFunds (retCode 170131)     |

RateLimitExceeded and DDoSProtection are siblings (both NetworkError) in ccxt 4.5.90: catch both.
A `server_error` with `status` 504 gives RequestTimeout instead of ExchangeNotAvailable.
aiohttp (under ccxt) silently resends a GET or DELETE whose connection dropped: a dropped Binance
query is invisible to the caller, and a dropped Binance cancel is resent and answers -2011
(OrderNotFound) although the first one cancelled the order. Bybit's order calls are POSTs: not resent.

The admin API (/_emulator/...) is in `admin`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import traceback
from collections.abc import Callable

from aiohttp import web

from config.settings import Settings, SimulationSettings
from emulator import admin
from emulator.binance import Binance
from emulator.book import Book, DuplicateRule
from emulator.bybit import Bybit
from emulator.faults import Fault
from emulator.protocol import EMULATOR, Emulator, Handler, Route, Venue, server_error
from emulator.traffic import Entry

VENUES: dict[str, Callable[[Emulator], Venue]] = {"binance": Binance, "bybit": Bybit}
DEFAULT_API_KEY = "emulator-key"
DEFAULT_SECRET = "emulator-secret"
DUPLICATE_RULES = {"binance": DuplicateRule.OPEN, "bybit": DuplicateRule.EVER}


def create_app(venue: str, sim: SimulationSettings, *, api_key: str = DEFAULT_API_KEY,
               secret: str = DEFAULT_SECRET, delay_ms: int = 0) -> web.Application:
    emu = Emulator(venue=venue, api_key=api_key, secret=secret, book=Book(sim, DUPLICATE_RULES[venue]))
    wire = VENUES[venue](emu)
    release = asyncio.Event()  # set at shutdown: held responses stop waiting
    app = web.Application()
    app[EMULATOR] = emu
    for route in wire.routes():
        app.router.add_route(route.method, route.path, _instrument(emu, wire, route, delay_ms, release))
    admin.add_routes(app)

    async def on_shutdown(_: web.Application) -> None:
        release.set()

    app.on_shutdown.append(on_shutdown)
    return app


def _instrument(emu: Emulator, venue: Venue, route: Route, delay_ms: int, release: asyncio.Event) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        fault: Fault | None = None
        response: web.StreamResponse
        if emu.ban.active(arrived):
            outcome = "banned"
            response = venue.banned(emu.ban.until_ms, emu.ban.retry_after_s(arrived))
        else:
            fault = emu.faults.take(route.endpoint_class)
            outcome = fault.kind if fault is not None else "ok"
            refusal = _refusal(emu, venue, fault) if fault is not None else None
            response = refusal if refusal is not None else await _process(request, route, fault, delay_ms)
        dropped = fault is not None and fault.kind == "drop_after_accept"
        entry = Entry(at=arrived, api_key=venue.api_key(request), endpoint=route.name,
                      endpoint_class=route.endpoint_class, signed=route.signed,
                      status=0 if dropped else response.status, outcome=outcome, weight=route.weight)
        emu.traffic.record(entry)
        if dropped:
            # Processed, then the connection goes away: the client never learns the outcome.
            assert request.transport is not None
            request.transport.abort()
            return response
        for name, value in venue.usage_headers(entry, time.monotonic()).items():
            response.headers.setdefault(name, value)  # a refusal's own limit headers win
        if fault is not None and fault.kind == "timeout_after_accept":
            with contextlib.suppress(TimeoutError):  # held until delay_ms, or shutdown
                await asyncio.wait_for(release.wait(), fault.delay_ms / 1000)
        return response

    return handle


async def _process(request: web.Request, route: Route, fault: Fault | None, delay_ms: int) -> web.StreamResponse:
    """Run the venue's handler (after any latency); `server_error_after` replaces its answer."""
    wait_ms = delay_ms + (fault.delay_ms if fault is not None and fault.kind == "slow" else 0)
    if wait_ms:
        await asyncio.sleep(wait_ms / 1000)
    try:
        response = await route.handler(request)
    except Exception:  # a bug here must not look like a venue answer: log it, answer 500
        traceback.print_exc()
        return server_error(500)
    if fault is not None and fault.kind == "server_error_after":
        return server_error(fault.status)
    return response


def _refusal(emu: Emulator, venue: Venue, fault: Fault) -> web.Response | None:
    """The answer of a fault that refuses the request unprocessed; None for the others."""
    if fault.kind == "rate_limit":
        return venue.rate_limited(fault.retry_after_s)
    if fault.kind == "ban":
        emu.ban.start(fault.ban_s)
        return venue.banned(emu.ban.until_ms, emu.ban.retry_after_s(time.monotonic()))
    if fault.kind == "server_error":
        return server_error(fault.status)
    if fault.kind == "reject":
        return venue.rejected()
    return None


# -- process -----------------------------------------------------------------------------------

def run(settings: Settings, args: argparse.Namespace) -> int:
    app = create_app(args.venue, settings.execution.simulation, api_key=args.api_key, secret=args.secret,
                     delay_ms=args.delay_ms)
    try:
        asyncio.run(_serve(app, args.host, args.port, args.venue, args.api_key))
    except OSError as exc:  # one line, whether run as `tom` or `python -m workers.cli`
        print(f"tom exchange-emulator: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


async def _serve(app: web.Application, host: str, port: int, venue: str, api_key: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Short shutdown grace: held (timeout_after_accept) responses are released at shutdown anyway.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"exchange-emulator: {venue} on http://{host}:{port} (api key {api_key})", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
