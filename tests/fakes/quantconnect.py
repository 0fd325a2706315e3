"""A fake QuantConnect REST API v2 with one live algorithm per project, for tests, over real HTTP.

It speaks the documented protocol independently of the adapter (activities/venues/quantconnect.py):
- authentication: HTTP Basic `user_id:sha256("<token>:<timestamp>")` plus a `Timestamp` header no
  older than 7200 s; anything else is HTTP 401 with the error envelope and a WWW-Authenticate header;
- POST /authenticate, POST /live/commands/create, POST /live/orders/read, answers in the
  {"success", "errors"} envelope; orders serialised as Lean's ApiOrderResponse (camelCase Order
  fields, integer type/status, `symbol`, `events` with fills and fees).
The live algorithm runs OrderCommand / CancelOrderCommand / UpdateOrderCommand at once (like Lean,
a command that fails is only logged) on our simulated venue model (`oms.venue_model`, prices from
`oms.markets`). Faults, one-shot per call (`fail_next`): `lost_response` (the command runs, the
connection drops without an answer), `server_error` (HTTP 500, nothing runs), `rate_limit`
(HTTP 429 with Retry-After, nothing runs). `listing_delay_s` makes new orders appear in the listing
late, as QuantConnect's does.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from config.settings import SimulationSettings
from oms import venue_model
from oms.markets import SIMULATED_SYMBOLS
from oms.models import OrderType, Side, TimeInForce
from oms.venue import VenueOrderRequest, VenueOrderStatus

MAX_TIMESTAMP_AGE_S = 7200
MARKET_CODES = {"bitfinex": 5, "kraken": 13, "binance": 16, "binanceus": 36, "bybit": 37, "coinbase": 38}
CRYPTO = 7
# Lean OrderStatus of each simulated status.
LEAN_STATUS = {VenueOrderStatus.NEW: 1, VenueOrderStatus.PARTIALLY_FILLED: 2, VenueOrderStatus.FILLED: 3,
               VenueOrderStatus.CANCELLED: 5, VenueOrderStatus.EXPIRED: 5, VenueOrderStatus.REJECTED: 7}


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class LiveOrder:
    lean_id: int
    tag: str
    ticker: str
    sim: venue_model.SimOrder
    created: float = field(default_factory=time.time)
    cancelled_at: datetime | None = None
    lean_status: int | None = None  # a test's override of the Lean OrderStatus the API reports


@dataclass
class LiveAlgorithm:
    project_id: int
    algorithm_id: str
    orders: list[LiveOrder] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # what Lean would print for failed commands


class QuantConnectFake:
    def __init__(self, users: dict[str, str], projects: list[int], market: str = "coinbase",
                 sim: SimulationSettings | None = None) -> None:
        self.users = dict(users)  # user id -> API token
        self.market = market
        self.sim = sim or SimulationSettings(delay_ms=0)
        self.algorithms = {p: LiveAlgorithm(p, hashlib.md5(str(p).encode()).hexdigest()) for p in projects}
        self.listing_delay_s = 0.0
        self.calls: Counter[str] = Counter()  # endpoint -> calls that passed authentication
        self.commands: list[dict[str, Any]] = []  # every command that ran
        self._faults: list[tuple[str, str, float]] = []  # (kind, endpoint, retry_after)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- control -----------------------------------------------------------------------------------
    def fail_next(self, kind: str, endpoint: str = "/live/commands/create", retry_after: float = 1.0) -> None:
        assert kind in ("lost_response", "server_error", "rate_limit"), kind
        self._faults.append((kind, endpoint, retry_after))

    def orders(self, project_id: int) -> list[LiveOrder]:
        return self.algorithms[project_id].orders

    async def start(self) -> str:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_post("/api/v2/authenticate", self._authenticated)
        app.router.add_post("/api/v2/live/commands/create", self._create_command)
        app.router.add_post("/api/v2/live/orders/read", self._read_orders)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/api/v2"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- protocol ----------------------------------------------------------------------------------
    @staticmethod
    def _answer(status: int = 200, errors: list[str] | None = None, **data: Any) -> web.Response:
        body = {**data, "success": not errors and status == 200, "errors": errors or []}
        return web.Response(status=status, text=json.dumps(body, default=float), content_type="application/json")

    def _credentials_ok(self, request: web.Request) -> bool:
        header, stamp = request.headers.get("Authorization", ""), request.headers.get("Timestamp", "")
        if not header.startswith("Basic ") or not stamp.isdigit():
            return False
        if abs(time.time() - int(stamp)) > MAX_TIMESTAMP_AGE_S:
            return False
        try:
            user_id, _, digest = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        token = self.users.get(user_id)
        return token is not None and hashlib.sha256(f"{token}:{stamp}".encode()).hexdigest() == digest

    @web.middleware
    async def _authenticate(self, request: web.Request, handler):
        if not self._credentials_ok(request):
            response = self._answer(401, ["Hash doesn't match."])
            response.headers["WWW-Authenticate"] = 'Basic realm="QuantConnect API"'
            return response
        endpoint = request.path.removeprefix("/api/v2")
        self.calls[endpoint] += 1
        for i, (kind, where, retry_after) in enumerate(self._faults):
            if where == endpoint and kind in ("server_error", "rate_limit"):
                del self._faults[i]
                if kind == "rate_limit":
                    response = self._answer(429, ["Too many requests, slow down."])
                    response.headers["Retry-After"] = str(retry_after)
                    return response
                return self._answer(500, ["Internal server error."])
        return await handler(request)

    def _take_lost_response(self, endpoint: str) -> bool:
        for i, (kind, where, _) in enumerate(self._faults):
            if kind == "lost_response" and where == endpoint:
                del self._faults[i]
                return True
        return False

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], LiveAlgorithm | None]:
        try:
            body = await request.json()
        except ValueError:
            return {}, None
        try:
            return body, self.algorithms.get(int(body.get("projectId")))
        except (TypeError, ValueError):
            return body, None

    async def _authenticated(self, request: web.Request) -> web.Response:
        return self._answer()

    async def _create_command(self, request: web.Request) -> web.Response:
        body, algorithm = await self._body(request)
        command = body.get("command")
        if algorithm is None:
            return self._answer(errors=["No live algorithm is running for this project."])
        if not isinstance(command, dict):
            return self._answer(errors=["Command is required."])
        self.commands.append(command)
        self._run(algorithm, command)
        if self._take_lost_response("/live/commands/create"):
            request.transport.close()  # ran; the answer never arrives
        return self._answer()

    async def _read_orders(self, request: web.Request) -> web.Response:
        body, algorithm = await self._body(request)
        if algorithm is None:
            return self._answer(errors=["No live algorithm is running for this project."])
        start, end = int(body.get("start", 0)), int(body.get("end", 0))
        if start < 0 or end < start or end - start >= 100:
            return self._answer(errors=["Invalid range: end - start must be less than 100."])
        now = _now()
        visible = [o for o in algorithm.orders if time.time() - o.created >= self.listing_delay_s]
        for order in visible:
            if order.sim.is_open:
                venue_model.advance(order.sim, now, self.sim)
        return self._answer(orders=[self._serialise(algorithm, o) for o in visible[start:end]],
                            length=len(visible))

    # --- the live algorithm ------------------------------------------------------------------------
    def _run(self, algorithm: LiveAlgorithm, command: dict[str, Any]) -> None:
        kind = command.get("$type")
        if kind == "OrderCommand":
            self._order(algorithm, command)
        elif kind in ("CancelOrderCommand", "UpdateOrderCommand"):
            order = next((o for o in algorithm.orders if o.lean_id == command.get("order_id")), None)
            if order is None:
                algorithm.log.append(f"{kind}: unable to locate order {command.get('order_id')}")
            elif kind == "CancelOrderCommand":
                was_open = order.sim.is_open
                venue_model.cancel(order.sim, _now(), self.sim)
                if was_open and order.sim.status == VenueOrderStatus.CANCELLED:
                    order.cancelled_at = _now()
            else:
                self._update(algorithm, order, command)
        else:
            algorithm.log.append(f"Detected unregistered command type '{kind}', will be ignored")

    def _order(self, algorithm: LiveAlgorithm, command: dict[str, Any]) -> None:
        symbol = command.get("symbol") or {}
        ticker, sid = str(symbol.get("value", "")), str(symbol.get("id", ""))
        name, _, props = sid.partition(" ")
        if name != ticker or not props or int(props, 36) != MARKET_CODES[self.market] * 100 + CRYPTO:
            algorithm.log.append(f"OrderCommand: invalid symbol {sid!r}")
            return
        try:
            quantity = Decimal(str(command.get("quantity")))
            limit = Decimal(str(command.get("limit_price") or 0))
        except InvalidOperation:
            algorithm.log.append("OrderCommand: invalid quantity or price")
            return
        order_type = str(command.get("order_type", "")).lower()
        lean_id = len(algorithm.orders) + 1
        ours = next((s for s in SIMULATED_SYMBOLS if s.replace("/", "") == ticker), None)
        is_limit = order_type == "limit"
        request = VenueOrderRequest(
            exchange="quantconnect", client_order_id=f"qc-{lean_id}", symbol=ours or ticker,
            side=Side.BUY if quantity > 0 else Side.SELL, order_type=OrderType.LIMIT if is_limit else OrderType.MARKET,
            quantity=abs(quantity) or Decimal(1), limit_price=limit if is_limit and limit > 0 else None,
            time_in_force=TimeInForce.GTC,  # Lean's default order properties
        )
        sim = venue_model.submit(request, str(lean_id), _now(), self.sim)
        # Lean records an order it cannot place with status Invalid and the reason in its event.
        if ours is None or quantity == 0 or order_type not in ("market", "limit") or (is_limit and limit <= 0):
            sim.fills, sim.status = [], VenueOrderStatus.REJECTED
            sim.reason = (f"Order Error: ids: [{lean_id}], Asset {ticker} was not found in your security list."
                          if ours is None else f"Order Error: ids: [{lean_id}], invalid order parameters")
        algorithm.orders.append(LiveOrder(lean_id, str(command.get("tag") or ""), ticker, sim))

    def _update(self, algorithm: LiveAlgorithm, order: LiveOrder, command: dict[str, Any]) -> None:
        try:
            quantity = command.get("quantity")
            price = command.get("limit_price")
            venue_model.amend(order.sim, abs(Decimal(str(quantity))) if quantity is not None else None,
                              Decimal(str(price)) if price is not None else None, _now(), self.sim)
        except (ValueError, InvalidOperation) as exc:
            algorithm.log.append(f"UpdateOrderCommand: order {order.lean_id}: {exc}")

    # --- Lean's ApiOrderResponse -------------------------------------------------------------------
    def _serialise(self, algorithm: LiveAlgorithm, order: LiveOrder) -> dict[str, Any]:
        sim = order.sim
        sign = 1 if sim.side == Side.BUY else -1
        created = sim.created_at.timestamp()
        events: list[dict[str, Any]] = []

        def event(status: str, at: float, **extra: Any) -> None:
            number = len(events) + 1
            events.append({
                "id": f"{algorithm.algorithm_id}-{order.lean_id}-{number}", "algorithmId": algorithm.algorithm_id,
                "orderId": order.lean_id, "orderEventId": number, "symbol": f"{order.ticker}",
                "symbolValue": order.ticker, "symbolPermtick": order.ticker, "time": at, "status": status,
                "fillPrice": 0, "fillPriceCurrency": "", "fillQuantity": 0,
                "direction": "buy" if sign > 0 else "sell", "isAssignment": False,
                "quantity": sign * sim.quantity, **extra})

        if sim.status == VenueOrderStatus.REJECTED:
            event("invalid", created, message=sim.reason)
        else:
            event("submitted", created)
            filled = Decimal(0)
            for fill in sim.fills:
                filled += fill.quantity
                event("filled" if filled >= sim.quantity else "partiallyFilled", fill.at.timestamp(),
                      fillPrice=fill.price, fillPriceCurrency=fill.fee_currency or "", fillQuantity=sign * fill.quantity,
                      orderFeeAmount=fill.fee, orderFeeCurrency=fill.fee_currency)
            if sim.status in (VenueOrderStatus.CANCELLED, VenueOrderStatus.EXPIRED):
                event("canceled", (order.cancelled_at or sim.evaluated_until).timestamp())
        last_fill = sim.fills[-1].at.isoformat().replace("+00:00", "Z") if sim.fills else None
        data: dict[str, Any] = {
            "type": 1 if sim.order_type == OrderType.LIMIT else 0, "id": order.lean_id, "contingentId": 0,
            "brokerId": [str(order.lean_id)],
            "symbol": {"value": order.ticker, "id": self._sid(order.ticker), "permtick": order.ticker},
            "price": sim.fills[0].price if sim.fills else (sim.limit_price or 0), "priceCurrency": "USD",
            "time": sim.created_at.isoformat().replace("+00:00", "Z"),
            "createdTime": sim.created_at.isoformat().replace("+00:00", "Z"), "lastFillTime": last_fill,
            "quantity": sign * sim.quantity, "status": order.lean_status if order.lean_status is not None else LEAN_STATUS[sim.status],
            "tag": order.tag,
            "properties": {"timeInForce": {}}, "securityType": CRYPTO, "direction": 0 if sign > 0 else 1,
            "value": sum((f.price * f.quantity for f in sim.fills), Decimal(0)),
            "orderSubmissionData": {"bidPrice": 0, "askPrice": 0, "lastPrice": 0},
            "isMarketable": sim.order_type == OrderType.MARKET, "priceAdjustmentMode": 0, "events": events,
        }
        if sim.order_type == OrderType.LIMIT:
            data["limitPrice"] = sim.limit_price
        return data

    def _sid(self, ticker: str) -> str:
        value, digits = MARKET_CODES[self.market] * 100 + CRYPTO, ""
        while value:
            value, rest = divmod(value, 36)
            digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[rest] + digits
        return f"{ticker} {digits}"
