"""The emulator's own API, under /_emulator/ (not part of either venue): faults, orders, stats.

- POST   /_emulator/faults   {"kind", "count" | "rate", "endpoints", "delay_ms", "retry_after_s", "ban_s",
                             "status"}: schedule a fault (see `faults`); 400 {"error"} when malformed
- GET    /_emulator/faults   pending faults and the ban in force
- DELETE /_emulator/faults   clear every fault and lift a ban (its record stays in the stats)
- GET    /_emulator/orders   every order ever placed, in placement order
- GET    /_emulator/stats?window_ms=W[&log=1]   counts and sliding-window maxima (see `traffic`)
- POST   /_emulator/book     {"depth_levels", "self_trade_expiry", "maker_fee", "taker_fee"}: shape the
                             venue (a one-level book makes a large market order end after partial fills;
                             fees make venues differ for routing); 400 {"error"} when malformed
- GET    /_emulator/book     the venue's shape in force
- POST   /_emulator/reset    a fresh venue: orders, trades, balances, stats, faults, bans and shape
- GET    /_emulator/health   which venue this process emulates
"""
from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from aiohttp import web

from emulator.book import BookError, EmuOrder
from emulator.faults import Fault
from emulator.protocol import EMULATOR


def add_routes(app: web.Application) -> None:
    app.router.add_post("/_emulator/faults", _add_fault)
    app.router.add_get("/_emulator/faults", _list_faults)
    app.router.add_delete("/_emulator/faults", _clear_faults)
    app.router.add_get("/_emulator/orders", _orders)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_post("/_emulator/book", _configure_book)
    app.router.add_get("/_emulator/book", _book_settings)
    app.router.add_post("/_emulator/trade-through", _trade_through)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_get("/_emulator/health", _health)


async def _add_fault(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    try:
        fault = Fault.from_json(await request.json())
    except ValueError as exc:  # includes malformed JSON
        return web.json_response({"error": str(exc)}, status=400)
    emu.faults.add(fault)
    return web.json_response({"faults": emu.faults.pending()})


async def _list_faults(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    banned = emu.ban.active(time.monotonic())
    return web.json_response({"faults": emu.faults.pending(),
                              "banned_until_ms": emu.ban.until_ms if banned else None})


async def _clear_faults(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    emu.faults.clear()
    emu.ban.lift()
    return web.json_response({"faults": []})


async def _orders(request: web.Request) -> web.Response:
    book = request.app[EMULATOR].book
    book.open_orders()  # resting orders advanced to now
    return web.json_response([_order_json(o) for o in book.orders])


async def _stats(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    try:
        window_ms = float(request.query.get("window_ms", "1000"))
    except ValueError:
        return web.json_response({"error": "window_ms must be a number"}, status=400)
    if window_ms <= 0:
        return web.json_response({"error": "window_ms must be positive"}, status=400)
    stats: dict[str, Any] = {
        "venue": emu.venue,
        **emu.traffic.stats(window_ms),
        "orders_placed": len(emu.book.orders),
        "duplicate_client_order_ids": emu.book.duplicate_client_order_ids(),
        "rejected_duplicates": emu.book.rejected_duplicates,
        "bans": [list(b) for b in emu.ban.history],
    }
    if request.query.get("log") == "1":
        stats["request_log"] = emu.traffic.log()
    return web.json_response(stats)


async def _configure_book(request: web.Request) -> web.Response:
    book = request.app[EMULATOR].book
    try:
        body = await request.json()
        if not isinstance(body, dict) or set(body) - {"depth_levels", "self_trade_expiry", "maker_fee", "taker_fee"}:
            raise ValueError("expected an object with depth_levels, self_trade_expiry, maker_fee and/or taker_fee")
        depth, stp = body.get("depth_levels"), body.get("self_trade_expiry")
        if (depth is not None and not isinstance(depth, int)) or (stp is not None and not isinstance(stp, bool)):
            raise ValueError("depth_levels is an integer, self_trade_expiry a boolean")
        fees = {k: body.get(k) for k in ("maker_fee", "taker_fee")}
        if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in fees.values()):
            raise ValueError("maker_fee and taker_fee are numbers (0.001 = 10 bps)")
        book.configure(depth_levels=depth, self_trade_expiry=stp, **fees)
    except ValueError as exc:  # includes malformed JSON and a depth the settings refuse
        return web.json_response({"error": str(exc).splitlines()[0]}, status=400)
    return web.json_response(book.settings())


async def _book_settings(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATOR].book.settings())


async def _trade_through(request: web.Request) -> web.Response:
    """The market trades through one resting order now: {"client_order_id": ...} -> the order."""
    book = request.app[EMULATOR].book
    try:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("client_order_id"), str):
            raise ValueError("expected an object with client_order_id")
        order = book.trade_through(book.find(client_order_id=body["client_order_id"]))
    except ValueError as exc:
        return web.json_response({"error": str(exc).splitlines()[0]}, status=400)
    except BookError as exc:
        return web.json_response({"error": exc.rejection.value, "detail": exc.detail}, status=409)
    return web.json_response(_order_json(order))


async def _reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset()
    return web.json_response({"reset": True})


async def _health(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR]
    return web.json_response({"venue": emu.venue, "api_key": emu.api_key})


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _order_json(order: EmuOrder) -> dict[str, Any]:
    p = order.placement
    return {
        "client_order_id": p.client_order_id, "venue_order_id": str(order.id), "symbol": p.symbol,
        "side": p.side.value, "type": p.order_type.value, "tif": p.time_in_force.value,
        "post_only": p.post_only, "quantity": _text(order.quantity), "price": _text(order.price),
        "status": order.status.value, "filled": _text(order.filled),
        "fills": [{"trade_id": str(t.id), "qty": _text(t.fill.quantity), "price": _text(t.fill.price),
                   "fee": _text(t.fee), "fee_asset": t.fee_asset, "maker": t.maker, "at_ms": t.time_ms}
                  for t in order.trades],
        "created_at": order.sim.created_at.isoformat(), "created_ms": order.created_ms,
    }
