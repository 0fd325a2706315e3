"""Binance spot REST API (/api/v3), as the real ccxt client uses it.

Wire rules mirrored from the venue's documentation:
- Signed endpoints take the key in `X-MBX-APIKEY` and an HMAC-SHA256 `signature` (hex) of the total
  params: the query string followed by the form body, without the signature itself. `timestamp` is
  checked against `recvWindow` (default 5000, at most 60000) when the request is processed.
- Errors are HTTP 4xx with `{"code": -xxxx, "msg": ...}`; codes and messages as Binance sends them,
  since ccxt maps some by message (insufficient balance) and others by code.
- A `newClientOrderId` may not repeat among open orders (-2010 "Duplicate order sent."); once the
  earlier order is closed the id may be used again, as on Binance.
- Usage headers `X-MBX-USED-WEIGHT-1M` (all requests, per IP) and `X-MBX-ORDER-COUNT-10S` /
  `-1D` (order placements per key) are reported; limits are not enforced (inject `rate_limit`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from oms import venue_model
from oms.markets import SIMULATED_SYMBOLS, simulated_market
from oms.models import OrderType, Side, TimeInForce
from oms.venue import VenueOrderStatus
from emulator.book import (
    BookError,
    EmuOrder,
    Placement,
    Rejection,
    Trade,
    max_quantity,
    unified_symbol,
    utc_now,
    venue_symbol,
)
from emulator.protocol import Emulator, Handler, Route, parse_decimal
from emulator.traffic import PLACEMENT_CLASSES, Entry

CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
INTEGER = re.compile(r"^[0-9]{1,20}$")
MAX_RECV_WINDOW = 60_000
ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET")
STATUS = {
    VenueOrderStatus.NEW: "NEW", VenueOrderStatus.PARTIALLY_FILLED: "PARTIALLY_FILLED",
    VenueOrderStatus.FILLED: "FILLED", VenueOrderStatus.CANCELLED: "CANCELED",
    VenueOrderStatus.REJECTED: "REJECTED", VenueOrderStatus.EXPIRED: "EXPIRED",
}
INSUFFICIENT_BALANCE = "Account has insufficient balance for requested action."


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg}, status=self.status)


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _illegal(name: str, legal: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def _f8(value: Decimal | None) -> str:
    return f"{value or Decimal(0):.8f}"


def _now_ms() -> int:
    return int(time.time() * 1000)


Params = dict[str, str]


class Binance:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    def routes(self) -> list[Route]:
        def public(method: str, path: str, fn: Callable[[Params], Any], weight: int = 1) -> Route:
            return Route(method, path, "market", self._endpoint(fn, signed=False), weight=weight)

        def signed(method: str, path: str, cls: str, fn: Callable[[Params], Any], weight: int = 1) -> Route:
            return Route(method, path, cls, self._endpoint(fn, signed=True), signed=True, weight=weight)

        return [
            public("GET", "/api/v3/ping", lambda p: {}),
            public("GET", "/api/v3/time", lambda p: {"serverTime": _now_ms()}),
            public("GET", "/api/v3/exchangeInfo", self.exchange_info, weight=20),
            public("GET", "/api/v3/depth", self.depth, weight=5),
            public("GET", "/api/v3/ticker/bookTicker", self.book_ticker, weight=2),
            public("GET", "/api/v3/ticker/24hr", self.ticker_24hr, weight=2),
            signed("GET", "/api/v3/account", "query", self.account, weight=20),
            signed("POST", "/api/v3/order", "create", self.new_order),
            signed("GET", "/api/v3/order", "query", self.query_order, weight=4),
            signed("DELETE", "/api/v3/order", "cancel", self.cancel_order),
            signed("POST", "/api/v3/order/cancelReplace", "amend", self.cancel_replace),
            signed("GET", "/api/v3/openOrders", "query", self.open_orders, weight=6),
            signed("DELETE", "/api/v3/openOrders", "cancel", self.cancel_open_orders),
            signed("GET", "/api/v3/allOrders", "query", self.all_orders, weight=20),
            signed("GET", "/api/v3/myTrades", "query", self.my_trades, weight=20),
        ]

    # -- the server's hooks --------------------------------------------------------------------

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("X-MBX-APIKEY")

    def rate_limited(self, retry_after_s: int) -> web.Response:
        body = {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per "
                "minute. Please use the websocket for live updates to avoid polling the API."}
        return web.json_response(body, status=429, headers={"Retry-After": str(retry_after_s)})

    def banned(self, until_ms: int, retry_after_s: int) -> web.Response:
        body = {"code": -1003, "msg": f"Way too much request weight used; IP banned until {until_ms}. "
                "Please use WebSocket Streams for live updates to avoid bans."}
        return web.json_response(body, status=418, headers={"Retry-After": str(retry_after_s)})

    def rejected(self) -> web.Response:
        return BinanceError(-2010, INSUFFICIENT_BALANCE).response()

    def usage_headers(self, entry: Entry, now: float) -> dict[str, str]:
        traffic = self.emu.traffic
        weight = traffic.counter("weight-1m", None, 60).add(now, entry.weight)  # per IP: one IP here
        headers = {"X-MBX-USED-WEIGHT-1M": str(weight)}
        if entry.endpoint_class in PLACEMENT_CLASSES:
            ten_s = traffic.counter("orders-10s", entry.api_key, 10).add(now)
            day = traffic.counter("orders-1d", entry.api_key, 86_400).add(now)
            headers.update({"X-MBX-ORDER-COUNT-10S": str(ten_s), "X-MBX-ORDER-COUNT-1D": str(day)})
        return headers

    # -- request handling ----------------------------------------------------------------------

    def _endpoint(self, fn: Callable[[Params], Any], signed: bool) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            query = request.rel_url.raw_query_string  # as signed: still percent-encoded
            body = await request.text() if request.can_read_body else ""
            params = dict(parse_qsl(query, keep_blank_values=True))
            params.update(parse_qsl(body, keep_blank_values=True))
            try:
                if signed:
                    self._authenticate(request, query, body, params)
                return web.json_response(fn(params))
            except BinanceError as exc:
                return exc.response()
        return handle

    def _authenticate(self, request: web.Request, query: str, body: str, params: Params) -> None:
        key = self.api_key(request)
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", status=401)
        if not hmac.compare_digest(key, self.emu.api_key):
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", status=401)
        if not params.get("timestamp"):
            raise _mandatory("timestamp")
        if not params.get("signature"):
            raise _mandatory("signature")
        expected = hmac.new(self.emu.secret.encode(), _signed_payload(query, body).encode(),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, params["signature"].lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        timestamp = _integer(params, "timestamp")
        recv_window = _integer(params, "recvWindow") if params.get("recvWindow") else 5000
        if recv_window > MAX_RECV_WINDOW:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        now = _now_ms()
        if timestamp >= now + 1000:
            raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - timestamp > recv_window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")

    # -- market data ---------------------------------------------------------------------------

    def exchange_info(self, params: Params) -> dict[str, Any]:
        symbols = list(SIMULATED_SYMBOLS)
        wanted = [params["symbol"]] if params.get("symbol") else None
        if params.get("symbols"):
            try:
                wanted = json.loads(params["symbols"])
            except ValueError:
                raise _illegal("symbols", '["SYMBOL1","SYMBOL2"]') from None
        if wanted is not None:
            symbols = [_symbol(s) for s in wanted]
        return {
            "timezone": "UTC", "serverTime": _now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(s) for s in symbols],
        }

    def depth(self, params: Params) -> dict[str, Any]:
        symbol = _symbol(_required(params, "symbol"))
        limit = _integer(params, "limit") if params.get("limit") else 100
        if not 1 <= limit <= 5000:
            raise _illegal("limit", "1-5000")
        bids, asks = _levels(self.emu, symbol, limit)
        return {"lastUpdateId": _now_ms(), "bids": bids, "asks": asks}

    def book_ticker(self, params: Params) -> Any:
        if params.get("symbol"):
            return self._book_ticker(_symbol(params["symbol"]))
        return [self._book_ticker(s) for s in SIMULATED_SYMBOLS]

    def _book_ticker(self, symbol: str) -> dict[str, str]:
        bids, asks = _levels(self.emu, symbol, 1)
        return {"symbol": venue_symbol(symbol), "bidPrice": bids[0][0], "bidQty": bids[0][1],
                "askPrice": asks[0][0], "askQty": asks[0][1]}

    def ticker_24hr(self, params: Params) -> Any:
        if params.get("symbol"):
            return self._ticker_24hr(_symbol(params["symbol"]))
        return [self._ticker_24hr(s) for s in SIMULATED_SYMBOLS]

    def _ticker_24hr(self, symbol: str) -> dict[str, Any]:
        sim, now = self.emu.book.sim, utc_now()
        open_at = now.timestamp() - 86_400
        # The price path sampled every 15 minutes: enough for high/low of a sum of slow sines.
        path = [venue_model.mid_price(symbol, now.fromtimestamp(open_at + i * 900, now.tzinfo), sim)
                for i in range(97)]
        last = venue_model.mid_price(symbol, now, sim)
        bids, asks = _levels(self.emu, symbol, 1)
        trades = [t for t in self.emu.book.trades
                  if t.order.placement.symbol == symbol and t.time_ms >= open_at * 1000]
        volume = sum((t.fill.quantity for t in trades), Decimal(0))
        return {
            "symbol": venue_symbol(symbol), "priceChange": _f8(last - path[0]),
            "priceChangePercent": f"{(last - path[0]) / path[0] * 100:.3f}",
            "weightedAvgPrice": _f8(sum(path, Decimal(0)) / len(path)), "prevClosePrice": _f8(path[0]),
            "lastPrice": _f8(last), "lastQty": _f8(trades[-1].fill.quantity if trades else Decimal(0)),
            "bidPrice": bids[0][0], "bidQty": bids[0][1], "askPrice": asks[0][0], "askQty": asks[0][1],
            "openPrice": _f8(path[0]), "highPrice": _f8(max(*path, last)), "lowPrice": _f8(min(*path, last)),
            "volume": _f8(volume), "quoteVolume": _f8(sum((t.quote_quantity for t in trades), Decimal(0))),
            "openTime": int(open_at * 1000), "closeTime": int(now.timestamp() * 1000),
            "firstId": trades[0].id if trades else -1, "lastId": trades[-1].id if trades else -1,
            "count": len(trades),
        }

    # -- account and orders --------------------------------------------------------------------

    def account(self, params: Params) -> dict[str, Any]:
        sim = self.emu.book.sim
        balances = self.emu.book.balances()
        if params.get("omitZeroBalances") == "true":
            balances = {a: fl for a, fl in balances.items() if fl[0] or fl[1]}
        return {
            "makerCommission": round(sim.maker_fee * 10_000), "takerCommission": round(sim.taker_fee * 10_000),
            "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": f"{sim.maker_fee:.8f}", "taker": f"{sim.taker_fee:.8f}",
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": _now_ms(),
            "accountType": "SPOT",
            "balances": [{"asset": a, "free": _f8(free), "locked": _f8(locked)}
                         for a, (free, locked) in balances.items()],
            "permissions": ["SPOT"], "uid": 100000001,
        }

    def new_order(self, params: Params) -> dict[str, Any]:
        order = self._place(params)
        return _placement_json(order, params.get("newOrderRespType"))

    def _place(self, params: Params) -> EmuOrder:
        placement = _parse_placement(params)
        if placement.post_only and self.emu.book.would_take(placement):
            raise BinanceError(-2010, "Order would immediately match and take.")
        try:
            return self.emu.book.place(placement)
        except BookError as exc:
            raise _placement_error(exc, placement) from None

    def query_order(self, params: Params) -> dict[str, Any]:
        return _order_json(self._find(params, "orderId", "origClientOrderId", _order_missing))

    def cancel_order(self, params: Params) -> dict[str, Any]:
        order = self._find(params, "orderId", "origClientOrderId", _cancel_unknown)
        self._cancel(order)
        return _cancel_json(order, params.get("newClientOrderId"))

    def _cancel(self, order: EmuOrder) -> None:
        try:
            self.emu.book.cancel(order)
        except BookError:
            raise _cancel_unknown() from None

    def cancel_replace(self, params: Params) -> dict[str, Any]:
        """Cancel then place (ccxt's edit_order on spot): one call, two results."""
        mode = _required(params, "cancelReplaceMode")
        if mode not in ("STOP_ON_FAILURE", "ALLOW_FAILURE"):
            raise _illegal("cancelReplaceMode", "STOP_ON_FAILURE|ALLOW_FAILURE")
        cancelled, placed = False, False
        try:
            order = self._find(params, "cancelOrderId", "cancelOrigClientOrderId", _cancel_unknown)
            self._cancel(order)
            cancel_answer = _cancel_json(order, params.get("cancelNewClientOrderId"))
            cancelled = True
        except BinanceError as exc:
            cancel_answer = {"code": exc.code, "msg": exc.msg}
            if mode == "STOP_ON_FAILURE":
                raise _CancelReplaceError(cancel_answer, None, cancelled=False, placed=False) from None
        try:
            new_answer: dict[str, Any] = _placement_json(self._place(params), params.get("newOrderRespType"))
            placed = True
        except BinanceError as exc:
            new_answer = {"code": exc.code, "msg": exc.msg}
        if not (cancelled and placed):
            raise _CancelReplaceError(cancel_answer, new_answer, cancelled=cancelled, placed=placed)
        return {"cancelResult": "SUCCESS", "newOrderResult": "SUCCESS",
                "cancelResponse": cancel_answer, "newOrderResponse": new_answer}

    def open_orders(self, params: Params) -> list[dict[str, Any]]:
        symbol = _symbol(params["symbol"]) if params.get("symbol") else None
        return [_order_json(o) for o in self.emu.book.open_orders(symbol)]

    def cancel_open_orders(self, params: Params) -> list[dict[str, Any]]:
        orders = self.emu.book.open_orders(_symbol(_required(params, "symbol")))
        if not orders:
            raise _cancel_unknown()
        for order in orders:
            self.emu.book.cancel(order)
        return [_cancel_json(o, None) for o in orders]

    def all_orders(self, params: Params) -> list[dict[str, Any]]:
        orders = self.emu.book.all_orders(_symbol(_required(params, "symbol")))
        if params.get("orderId"):
            orders = [o for o in orders if o.id >= _integer(params, "orderId")]
        orders = _in_time_range(orders, params, lambda o: o.created_ms)
        return [_order_json(o) for o in orders[:_limit(params, 500, 1000)]]

    def my_trades(self, params: Params) -> list[dict[str, Any]]:
        trades = self.emu.book.list_trades(_symbol(_required(params, "symbol")))
        if params.get("orderId"):
            trades = [t for t in trades if t.order.id == _integer(params, "orderId")]
        if params.get("fromId"):
            trades = [t for t in trades if t.id >= _integer(params, "fromId")]
        trades = _in_time_range(trades, params, lambda t: t.time_ms)
        return [_trade_json(t) for t in trades[:_limit(params, 500, 1000)]]

    def _find(self, params: Params, id_name: str, client_name: str,
              missing: Callable[[], BinanceError]) -> EmuOrder:
        symbol = _symbol(_required(params, "symbol"))
        if not params.get(id_name) and not params.get(client_name):
            raise BinanceError(-1102, f"Param '{client_name}' or '{id_name}' must be sent, but both were empty/null!")
        order_id = _integer(params, id_name) if params.get(id_name) else None
        try:
            return self.emu.book.find(order_id=order_id, client_order_id=params.get(client_name), symbol=symbol)
        except BookError:
            raise missing() from None


# -- parsing -----------------------------------------------------------------------------------

def _signed_payload(query: str, body: str) -> str:
    """Binance's totalParams: query string then body, each without the `signature` pair."""
    def strip(raw: str) -> str:
        return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))
    return strip(query) + strip(body)


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if not value:
        raise _mandatory(name)
    return value


def _integer(params: Params, name: str) -> int:
    value = params.get(name, "")
    if not INTEGER.match(value):
        raise _illegal(name, "^[0-9]{1,20}$")
    return int(value)


def _decimal(params: Params, name: str) -> Decimal | None:
    try:
        return parse_decimal(params.get(name))
    except ValueError:
        raise _illegal(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$") from None


def _limit(params: Params, default: int, maximum: int) -> int:
    return min(_integer(params, "limit"), maximum) if params.get("limit") else default


def _symbol(venue_id: str) -> str:
    symbol = unified_symbol(venue_id)
    if symbol is None:
        raise BinanceError(-1121, "Invalid symbol.")
    return symbol


def _in_time_range(items: list[Any], params: Params, at: Callable[[Any], int]) -> list[Any]:
    start = _integer(params, "startTime") if params.get("startTime") else None
    end = _integer(params, "endTime") if params.get("endTime") else None
    return [i for i in items if (start is None or at(i) >= start) and (end is None or at(i) <= end)]


def _parse_placement(params: Params) -> Placement:
    symbol = _symbol(_required(params, "symbol"))
    side = _required(params, "side")
    if side not in ("BUY", "SELL"):
        raise BinanceError(-1117, "Invalid side.")
    kind = _required(params, "type")
    if kind not in ORDER_TYPES:
        raise BinanceError(-2010, "Order type not supported for this symbol.")
    cid = params.get("newClientOrderId") or f"emu{uuid.uuid4().hex[:19]}"
    if not CLIENT_ID.match(cid):
        raise _illegal("newClientOrderId", "^[\\.A-Z\\:/a-z0-9_-]{1,36}$")
    quantity, price = _decimal(params, "quantity"), _decimal(params, "price")
    if kind == "MARKET":
        quote = _decimal(params, "quoteOrderQty")
        if quantity is None and quote is None:
            raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
        return Placement(symbol=symbol, side=Side(side.lower()), order_type=OrderType.MARKET,
                         quantity=quantity, quote_quantity=None if quantity else quote, client_order_id=cid)
    if quantity is None:
        raise _mandatory("quantity")
    if price is None:
        raise _mandatory("price")
    if kind == "LIMIT_MAKER":
        tif = TimeInForce.GTC
    else:
        raw_tif = _required(params, "timeInForce")
        if raw_tif not in ("GTC", "IOC", "FOK"):
            raise BinanceError(-1115, "Invalid timeInForce.")
        tif = TimeInForce(raw_tif)
    return Placement(symbol=symbol, side=Side(side.lower()), order_type=OrderType.LIMIT, time_in_force=tif,
                     quantity=quantity, price=price, client_order_id=cid, post_only=kind == "LIMIT_MAKER")


def _placement_error(exc: BookError, placement: Placement) -> BinanceError:
    lot = "MARKET_LOT_SIZE" if placement.order_type == OrderType.MARKET else "LOT_SIZE"
    return {
        Rejection.UNKNOWN_SYMBOL: BinanceError(-1121, "Invalid symbol."),
        Rejection.PRICE_FILTER: BinanceError(-1013, "Filter failure: PRICE_FILTER"),
        Rejection.LOT_SIZE: BinanceError(-1013, f"Filter failure: {lot}"),
        Rejection.MIN_QTY: BinanceError(-1013, f"Filter failure: {lot}"),
        Rejection.MAX_QTY: BinanceError(-1013, f"Filter failure: {lot}"),
        Rejection.MIN_NOTIONAL: BinanceError(-1013, "Filter failure: NOTIONAL"),
        Rejection.INSUFFICIENT_BALANCE: BinanceError(-2010, INSUFFICIENT_BALANCE),
        Rejection.DUPLICATE_CLIENT_ID: BinanceError(-2010, "Duplicate order sent."),
    }.get(exc.rejection, BinanceError(-2010, exc.detail or exc.rejection.value))


def _order_missing() -> BinanceError:
    return BinanceError(-2013, "Order does not exist.")


def _cancel_unknown() -> BinanceError:
    return BinanceError(-2011, "Unknown order sent.")


class _CancelReplaceError(BinanceError):
    """-2021 (one half done, HTTP 409) or -2022 (nothing done), both halves' answers in `data`."""

    def __init__(self, cancel_answer: dict[str, Any], new_answer: dict[str, Any] | None,
                 cancelled: bool, placed: bool) -> None:
        if cancelled or placed:
            super().__init__(-2021, "Order cancel-replace partially failed.", status=409)
        else:
            super().__init__(-2022, "Order cancel-replace failed.")
        self.data = {
            "cancelResult": "SUCCESS" if cancelled else "FAILURE",
            "newOrderResult": "NOT_ATTEMPTED" if new_answer is None else ("SUCCESS" if placed else "FAILURE"),
            "cancelResponse": cancel_answer, "newOrderResponse": new_answer,
        }

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg, "data": self.data}, status=self.status)


# -- JSON shapes -------------------------------------------------------------------------------

def _symbol_info(symbol: str) -> dict[str, Any]:
    market = simulated_market(symbol)
    assert market is not None
    return {
        "symbol": venue_symbol(symbol), "status": "TRADING",
        "baseAsset": market.base, "baseAssetPrecision": 8,
        "quoteAsset": market.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": list(ORDER_TYPES), "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False, "cancelReplaceAllowed": True,
        "amendAllowed": False, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": _f8(market.price_step),
             "maxPrice": "1000000.00000000", "tickSize": _f8(market.price_step)},
            {"filterType": "LOT_SIZE", "minQty": _f8(market.min_amount),
             "maxQty": _f8(max_quantity(market)), "stepSize": _f8(market.amount_step)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": _f8(market.min_amount),
             "maxQty": _f8(max_quantity(market)), "stepSize": _f8(market.amount_step)},
            {"filterType": "NOTIONAL", "minNotional": _f8(market.min_notional), "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _levels(emu: Emulator, symbol: str, limit: int) -> tuple[list[list[str]], list[list[str]]]:
    bids, asks = emu.book.depth(symbol, limit)
    return [[_f8(p), _f8(q)] for p, q in bids], [[_f8(p), _f8(q)] for p, q in asks]


def _order_type(order: EmuOrder) -> str:
    if order.placement.order_type == OrderType.MARKET:
        return "MARKET"
    return "LIMIT_MAKER" if order.placement.post_only else "LIMIT"


def _common(order: EmuOrder) -> dict[str, Any]:
    p = order.placement
    return {
        "price": _f8(order.price), "origQty": _f8(order.quantity), "executedQty": _f8(order.filled),
        "origQuoteOrderQty": _f8(p.quote_quantity), "cummulativeQuoteQty": _f8(order.filled_quote),
        "status": "EXPIRED_IN_MATCH" if order.expired_in_match else STATUS[order.status], "timeInForce": p.time_in_force.value, "type": _order_type(order),
        "side": p.side.value.upper(),
    }


def _order_json(order: EmuOrder) -> dict[str, Any]:
    p = order.placement
    return {
        "symbol": venue_symbol(p.symbol), "orderId": order.id, "orderListId": -1,
        "clientOrderId": p.client_order_id, **_common(order),
        "stopPrice": _f8(None), "icebergQty": _f8(None), "time": order.created_ms,
        "updateTime": order.updated_ms, "isWorking": True, "workingTime": order.created_ms,
        "selfTradePreventionMode": "EXPIRE_MAKER",
    }


def _placement_json(order: EmuOrder, resp_type: str | None) -> dict[str, Any]:
    ack = {"symbol": venue_symbol(order.placement.symbol), "orderId": order.id, "orderListId": -1,
           "clientOrderId": order.placement.client_order_id, "transactTime": order.created_ms}
    if resp_type == "ACK":
        return ack
    result = {**ack, **_common(order), "workingTime": order.created_ms, "selfTradePreventionMode": "EXPIRE_MAKER"}
    if resp_type in (None, "", "FULL"):
        result["fills"] = [{"price": _f8(t.fill.price), "qty": _f8(t.fill.quantity), "commission": _f8(t.fee),
                            "commissionAsset": t.fee_asset, "tradeId": t.id} for t in order.trades]
    return result


def _cancel_json(order: EmuOrder, cancel_client_id: str | None) -> dict[str, Any]:
    return {
        "symbol": venue_symbol(order.placement.symbol), "origClientOrderId": order.placement.client_order_id,
        "orderId": order.id, "orderListId": -1,
        "clientOrderId": cancel_client_id or f"emu{uuid.uuid4().hex[:19]}",
        "transactTime": _now_ms(), **_common(order), "selfTradePreventionMode": "EXPIRE_MAKER",
    }


def _trade_json(trade: Trade) -> dict[str, Any]:
    order = trade.order
    return {
        "symbol": venue_symbol(order.placement.symbol), "id": trade.id, "orderId": order.id, "orderListId": -1,
        "price": _f8(trade.fill.price), "qty": _f8(trade.fill.quantity), "quoteQty": _f8(trade.quote_quantity),
        "commission": _f8(trade.fee), "commissionAsset": trade.fee_asset, "time": trade.time_ms,
        "isBuyer": order.placement.side == Side.BUY, "isMaker": trade.maker, "isBestMatch": True,
    }
