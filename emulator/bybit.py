"""Bybit v5 REST API (spot category), as the real ccxt client uses it.

Wire rules mirrored from the venue's documentation:
- Signed requests carry `X-BAPI-API-KEY`, `X-BAPI-TIMESTAMP`, `X-BAPI-RECV-WINDOW` and
  `X-BAPI-SIGN` = hex HMAC-SHA256(secret, timestamp + key + recvWindow + payload), the payload being
  the raw query string of a GET or the raw JSON body of a POST. The timestamp must satisfy
  server - recvWindow <= timestamp < server + 1000 when the request is processed.
- Every answer is the envelope {"retCode", "retMsg", "result", "retExtInfo", "time"}, HTTP 200 for
  business errors too; only an IP ban is an HTTP 403 without JSON.
- An `orderLinkId` may never repeat (110072), open or not. Spot market buys are sized in the quote
  coin unless `marketUnit` is `baseCoin`.
- `/v5/order/realtime` returns open orders, or any order when asked by orderId/orderLinkId, or the
  recent closed ones with openOnly=1; `/v5/order/history` returns every order (filter orderStatus).
- The account is a unified trading account (UTA 2.0): `/v5/user/query-api` and `/v5/account/info`
  answer so, which is what ccxt asks before trading.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

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
from emulator.traffic import Entry

ORDER_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
RECENT_CLOSED = 500  # closed orders /v5/order/realtime still shows (openOnly=1)
# Per-UID limits per endpoint and second, as Bybit publishes them for spot (reported, not enforced).
LIMITS = {"create": 20, "amend": 20, "cancel": 20, "query": 50}

Params = dict[str, Any]


class BybitError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _envelope(result: Any, code: int = 0, msg: str = "OK") -> dict[str, Any]:
    return {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": _now_ms()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _hmac(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _params_error(what: str) -> BybitError:
    return BybitError(10001, f"params error: {what}")


def _text(value: Decimal | None) -> str:
    """Bybit's plain decimal strings ("0.001", "60000")."""
    return format((value or Decimal(0)).normalize(), "f")


class Bybit:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    def routes(self) -> list[Route]:
        def public(path: str, fn: Callable[[Params], Any]) -> Route:
            return Route("GET", path, "market", self._endpoint(fn, signed=False))

        def signed(method: str, path: str, cls: str, fn: Callable[[Params], Any]) -> Route:
            return Route(method, path, cls, self._endpoint(fn, signed=True), signed=True)

        return [
            public("/v5/market/time", self.server_time),
            public("/v5/market/instruments-info", self.instruments),
            public("/v5/market/orderbook", self.orderbook),
            public("/v5/market/tickers", self.tickers),
            signed("POST", "/v5/order/create", "create", self.create_order),
            signed("POST", "/v5/order/amend", "amend", self.amend_order),
            signed("POST", "/v5/order/cancel", "cancel", self.cancel_order),
            signed("POST", "/v5/order/cancel-all", "cancel", self.cancel_all),
            signed("GET", "/v5/order/realtime", "query", self.realtime),
            signed("GET", "/v5/order/history", "query", self.history),
            signed("GET", "/v5/execution/list", "query", self.executions),
            signed("GET", "/v5/account/wallet-balance", "query", self.wallet_balance),
            signed("GET", "/v5/account/info", "query", self.account_info),
            signed("GET", "/v5/user/query-api", "query", self.api_key_info),
            signed("GET", "/v5/asset/coin/query-info", "query", self.coins),
        ]

    # -- the server's hooks --------------------------------------------------------------------

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("X-BAPI-API-KEY")

    def rate_limited(self, retry_after_s: int) -> web.Response:
        reset = _now_ms() + retry_after_s * 1000
        return web.json_response(
            _envelope({}, 10006, "Too many visits. Exceeded the API Rate Limit."),
            headers={"X-Bapi-Limit": "20", "X-Bapi-Limit-Status": "0", "X-Bapi-Limit-Reset-Timestamp": str(reset)})

    def banned(self, until_ms: int, retry_after_s: int) -> web.Response:
        return web.Response(status=403, text=f"403 Forbidden: access too frequent. IP banned until {until_ms}.",
                            headers={"Retry-After": str(retry_after_s)})

    def rejected(self) -> web.Response:
        return web.json_response(_envelope({}, 170131, "Insufficient balance."))

    def usage_headers(self, entry: Entry, now: float) -> dict[str, str]:
        if not entry.signed:
            return {}
        counter = self.emu.traffic.counter(entry.endpoint, entry.api_key, 1)
        used = counter.add(now)
        oldest = counter.oldest() or now
        limit = LIMITS.get(entry.endpoint_class, 50)
        return {"X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": str(max(0, limit - used)),
                "X-Bapi-Limit-Reset-Timestamp": str(_now_ms() + int((oldest + 1 - now) * 1000))}

    # -- request handling ----------------------------------------------------------------------

    def _endpoint(self, fn: Callable[[Params], Any], signed: bool) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                if request.method == "POST":
                    body = await request.text()
                    params, signed_forms = _json_object(body), {body}
                else:
                    # ccxt signs the query decoded (its rawencode); other clients sign it as sent.
                    params = dict(request.query)
                    signed_forms = {request.query_string, request.rel_url.raw_query_string}
                if signed:
                    self._authenticate(request, signed_forms)
                return web.json_response(_envelope(fn(params)))
            except BybitError as exc:
                return web.json_response(_envelope({}, exc.code, exc.msg))
        return handle

    def _authenticate(self, request: web.Request, payloads: set[str]) -> None:
        """Key, then signature (over any of the accepted payload forms), then timestamp."""
        headers = request.headers
        key = headers.get("X-BAPI-API-KEY", "")
        if not key or not hmac.compare_digest(key, self.emu.api_key):
            raise BybitError(10003, "API key is invalid.")
        timestamp, recv_window = headers.get("X-BAPI-TIMESTAMP", ""), headers.get("X-BAPI-RECV-WINDOW", "5000")
        if not timestamp.isdigit() or not recv_window.isdigit():
            raise BybitError(10002, "invalid request, please check your timestamp and recv_window param")
        signature = headers.get("X-BAPI-SIGN", "").lower()
        origins = [timestamp + key + recv_window + payload for payload in sorted(payloads)]
        if not any(hmac.compare_digest(_hmac(self.emu.secret, origin), signature) for origin in origins):
            raise BybitError(10004, f"error sign! origin_string[{origins[0]}]")
        now = _now_ms()
        if not now - int(recv_window) <= int(timestamp) < now + 1000:
            raise BybitError(10002, "invalid request, please check your server timestamp or recv_window param. "
                             f"req_timestamp[{timestamp}],server_timestamp[{now}],recv_window[{recv_window}]")

    # -- market data ---------------------------------------------------------------------------

    def server_time(self, params: Params) -> dict[str, str]:
        now_ns = time.time_ns()
        return {"timeSecond": str(now_ns // 10**9), "timeNano": str(now_ns)}

    def instruments(self, params: Params) -> dict[str, Any]:
        category = _category(params, allow_derivatives=True)
        symbols = [] if category != "spot" else list(SIMULATED_SYMBOLS)
        if params.get("symbol"):
            symbols = [s for s in symbols if venue_symbol(s) == params["symbol"]]
        page, cursor = _page(symbols, params, default=500, maximum=1000)
        return {"category": category, "list": [_instrument(s) for s in page], "nextPageCursor": cursor}

    def orderbook(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbol = _symbol(params)
        limit = _int(params, "limit", 1)
        if not 1 <= limit <= 200:
            raise _params_error("limit")
        bids, asks = _levels(self.emu, symbol, limit)
        now = _now_ms()
        return {"s": venue_symbol(symbol), "b": bids, "a": asks, "ts": now, "u": now, "seq": now, "cts": now}

    def tickers(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbols = [_symbol(params)] if params.get("symbol") else list(SIMULATED_SYMBOLS)
        return {"category": "spot", "list": [self._ticker(s) for s in symbols]}

    def _ticker(self, symbol: str) -> dict[str, str]:
        sim, now = self.emu.book.sim, utc_now()
        last = venue_model.mid_price(symbol, now, sim)
        day_ago = venue_model.mid_price(symbol, now.fromtimestamp(now.timestamp() - 86_400, now.tzinfo), sim)
        bids, asks = _levels(self.emu, symbol, 1)
        return {
            "symbol": venue_symbol(symbol), "bid1Price": bids[0][0], "bid1Size": bids[0][1],
            "ask1Price": asks[0][0], "ask1Size": asks[0][1], "lastPrice": _text(last),
            "prevPrice24h": _text(day_ago), "price24hPcnt": f"{(last - day_ago) / day_ago:.4f}",
            "highPrice24h": _text(max(last, day_ago)), "lowPrice24h": _text(min(last, day_ago)),
            "turnover24h": "0", "volume24h": "0", "usdIndexPrice": _text(last),
        }

    # -- trading -------------------------------------------------------------------------------

    def create_order(self, params: Params) -> dict[str, str]:
        _category(params)
        placement = _parse_placement(params)
        try:
            order = self.emu.book.place(placement)
        except BookError as exc:
            raise _book_error(exc) from None
        return {"orderId": str(order.id), "orderLinkId": order.placement.client_order_id}

    def amend_order(self, params: Params) -> dict[str, str]:
        _category(params)
        order = self._find(params)
        quantity, price = _decimal(params, "qty"), _decimal(params, "price")
        if quantity is None and price is None:
            raise _params_error("qty or price must be sent")
        try:
            self.emu.book.amend(order, quantity, price)
        except BookError as exc:
            raise _book_error(exc) from None
        return {"orderId": str(order.id), "orderLinkId": order.placement.client_order_id}

    def cancel_order(self, params: Params) -> dict[str, str]:
        _category(params)
        order = self._find(params)
        try:
            self.emu.book.cancel(order)
        except BookError as exc:
            raise _book_error(exc) from None
        return {"orderId": str(order.id), "orderLinkId": order.placement.client_order_id}

    def cancel_all(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbol = _symbol(params) if params.get("symbol") else None
        orders = self.emu.book.open_orders(symbol)
        for order in orders:
            self.emu.book.cancel(order)
        return {"list": [{"orderId": str(o.id), "orderLinkId": o.placement.client_order_id} for o in orders],
                "success": "1"}

    def _find(self, params: Params) -> EmuOrder:
        """The order an amend or cancel names (orderId wins over orderLinkId)."""
        order_id, link_id = str(params.get("orderId") or ""), str(params.get("orderLinkId") or "")
        if not order_id and not link_id:
            raise _params_error("orderId or orderLinkId is required")
        symbol = _symbol(params) if params.get("symbol") else None
        try:
            if order_id and not order_id.isdigit():
                raise BookError(Rejection.UNKNOWN_ORDER)
            return self.emu.book.find(order_id=int(order_id) if order_id else None,
                                      client_order_id=link_id or None, symbol=symbol)
        except BookError:
            raise BybitError(110001, "Order does not exist.") from None

    # -- queries -------------------------------------------------------------------------------

    def realtime(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbol = _symbol(params) if params.get("symbol") else None
        if params.get("orderId") or params.get("orderLinkId"):
            orders = self._by_ids(params, symbol)
        elif str(params.get("openOnly", "0")) == "1":
            orders = [o for o in self.emu.book.all_orders(symbol) if not o.is_open][-RECENT_CLOSED:]
        else:
            orders = self.emu.book.open_orders(symbol)
        return self._order_page(orders, params)

    def history(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbol = _symbol(params) if params.get("symbol") else None
        if params.get("orderId") or params.get("orderLinkId"):
            orders = self._by_ids(params, symbol)
        else:
            orders = self.emu.book.all_orders(symbol)
        if params.get("orderStatus"):
            orders = [o for o in orders if _status(o) == params["orderStatus"]]
        orders = _in_time_range(orders, params, lambda o: o.created_ms)
        return self._order_page(orders, params)

    def _by_ids(self, params: Params, symbol: str | None) -> list[EmuOrder]:
        """The order named by orderId and/or orderLinkId (both must agree), whatever its status."""
        try:
            order = self._find(params)
        except BybitError:
            return []
        link_id = str(params.get("orderLinkId") or "")
        if link_id and order.placement.client_order_id != link_id:
            return []
        return [order] if symbol is None or order.placement.symbol == symbol else []

    def _order_page(self, orders: list[EmuOrder], params: Params) -> dict[str, Any]:
        newest_first = sorted(orders, key=lambda o: o.id, reverse=True)
        page, cursor = _page(newest_first, params, default=20, maximum=50)
        return {"category": "spot", "list": [_order_json(o) for o in page], "nextPageCursor": cursor}

    def executions(self, params: Params) -> dict[str, Any]:
        _category(params)
        symbol = _symbol(params) if params.get("symbol") else None
        trades = self.emu.book.list_trades(symbol)
        if params.get("orderId"):
            trades = [t for t in trades if str(t.order.id) == str(params["orderId"])]
        if params.get("orderLinkId"):
            trades = [t for t in trades if t.order.placement.client_order_id == params["orderLinkId"]]
        trades = _in_time_range(trades, params, lambda t: t.time_ms)
        page, cursor = _page(trades[::-1], params, default=50, maximum=100)
        return {"category": "spot", "list": [_execution_json(t) for t in page], "nextPageCursor": cursor}

    def wallet_balance(self, params: Params) -> dict[str, Any]:
        if params.get("accountType") != "UNIFIED":
            raise _params_error("accountType only supports UNIFIED")
        wanted = set(str(params["coin"]).split(",")) if params.get("coin") else None
        sim, now = self.emu.book.sim, utc_now()
        coins, total_usd = [], Decimal(0)
        for asset, (free, locked) in self.emu.book.balances().items():
            if wanted is not None and asset not in wanted:
                continue
            total = free + locked
            price = Decimal(1) if asset == "USDT" else (
                venue_model.mid_price(f"{asset}/USDT", now, sim) if simulated_market(f"{asset}/USDT") else Decimal(0))
            usd = total * price
            total_usd += usd
            coins.append({
                "coin": asset, "equity": _text(total), "usdValue": _text(usd), "walletBalance": _text(total),
                "availableToWithdraw": _text(free), "locked": _text(locked), "borrowAmount": "0",
                "accruedInterest": "0", "totalOrderIM": "0", "totalPositionIM": "0", "totalPositionMM": "0",
                "unrealisedPnl": "0", "cumRealisedPnl": "0", "bonus": "0", "collateralSwitch": True,
                "marginCollateral": True, "spotHedgingQty": "0", "availableToBorrow": "",
            })
        usd_text = _text(total_usd)
        return {"list": [{
            "accountType": "UNIFIED", "totalEquity": usd_text, "totalWalletBalance": usd_text,
            "totalMarginBalance": usd_text, "totalAvailableBalance": usd_text, "totalPerpUPL": "0",
            "totalInitialMargin": "0", "totalMaintenanceMargin": "0", "accountIMRate": "0",
            "accountMMRate": "0", "accountLTV": "0", "coin": coins,
        }]}

    def account_info(self, params: Params) -> dict[str, Any]:
        return {"unifiedMarginStatus": 6, "marginMode": "REGULAR_MARGIN", "isMasterTrader": False,
                "spotHedgingStatus": "OFF", "updatedTime": str(_now_ms()), "dcpStatus": "OFF",
                "timeWindow": 10, "smpGroup": 0}

    def api_key_info(self, params: Params) -> dict[str, Any]:
        return {
            "id": "1", "note": "exchange emulator", "apiKey": self.emu.api_key, "readOnly": 0, "secret": "",
            "permissions": {"ContractTrade": [], "Spot": ["SpotTrade"], "Wallet": ["AccountTransfer"],
                            "Options": [], "Derivatives": [], "CopyTrading": [], "BlockTrade": [],
                            "Exchange": [], "NFT": [], "Affiliate": [], "Earn": []},
            "ips": ["*"], "type": 1, "deadlineDay": -1, "expiredAt": "", "createdAt": "2024-01-01T00:00:00Z",
            "unified": 0, "uta": 1, "userID": 100000001, "inviterID": 0, "vipLevel": "No VIP",
            "mktMakerLevel": "0", "affiliateID": 0, "rsaPublicKey": "", "isMaster": True, "parentUid": "0",
            "kycLevel": "LEVEL_DEFAULT", "kycRegion": "",
        }

    def coins(self, params: Params) -> dict[str, Any]:
        assets = sorted({a for s in SIMULATED_SYMBOLS for a in s.split("/")})
        return {"rows": [{"name": a, "coin": a, "remainAmount": "0", "chains": []} for a in assets]}


# -- parsing -----------------------------------------------------------------------------------

def _json_object(body: str) -> Params:
    try:
        params = json.loads(body) if body else {}
    except ValueError:
        raise _params_error("request body is not valid JSON") from None
    if not isinstance(params, dict):
        raise _params_error("request body must be a JSON object")
    return params


def _category(params: Params, allow_derivatives: bool = False) -> str:
    category = params.get("category")
    if category == "spot" or (allow_derivatives and category in ("linear", "inverse", "option")):
        return str(category)
    raise _params_error("category only supports spot")


def _symbol(params: Params) -> str:
    raw = params.get("symbol")
    if not raw:
        raise _params_error("symbol is required")
    symbol = unified_symbol(str(raw))
    if symbol is None:
        raise BybitError(170121, "Invalid symbol.")
    return symbol


def _int(params: Params, name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not str(raw).isdigit():
        raise _params_error(f"{name} invalid")
    return int(raw)


def _decimal(params: Params, name: str) -> Decimal | None:
    try:
        return parse_decimal(None if params.get(name) is None else str(params[name]))
    except ValueError:
        raise _params_error(f"{name} invalid") from None


def _page(items: list[Any], params: Params, default: int, maximum: int) -> tuple[list[Any], str]:
    """Cursor pagination: the cursor is the offset of the next page ("" on the last page)."""
    limit = min(_int(params, "limit", default), maximum)
    start = _int(params, "cursor", 0)
    end = start + limit
    return items[start:end], str(end) if end < len(items) else ""


def _in_time_range(items: list[Any], params: Params, at: Callable[[Any], int]) -> list[Any]:
    start, end = _int(params, "startTime", 0), _int(params, "endTime", 0)
    return [i for i in items if at(i) >= start and (not end or at(i) <= end)]


def _parse_placement(params: Params) -> Placement:
    symbol = _symbol(params)
    side = params.get("side")
    if side not in ("Buy", "Sell"):
        raise _params_error("side invalid")
    kind = params.get("orderType")
    if kind not in ("Market", "Limit"):
        raise _params_error("orderType invalid")
    if params.get("orderFilter", "Order") != "Order" or params.get("triggerPrice"):
        raise _params_error("only plain orders (orderFilter Order) are supported")
    link_id = str(params.get("orderLinkId") or "")
    if link_id and not ORDER_LINK_ID.match(link_id):
        raise _params_error("orderLinkId invalid")
    qty = _decimal(params, "qty")
    if qty is None:
        raise _params_error("qty is required")
    tif_raw = params.get("timeInForce") or ("IOC" if kind == "Market" else "GTC")
    if tif_raw not in ("GTC", "IOC", "FOK", "PostOnly"):
        raise _params_error("timeInForce invalid")
    post_only = tif_raw == "PostOnly"
    tif = TimeInForce.GTC if post_only else TimeInForce(tif_raw)
    order_side = Side(side.lower())
    if kind == "Market":
        unit = params.get("marketUnit") or ("quoteCoin" if order_side == Side.BUY else "baseCoin")
        if unit not in ("baseCoin", "quoteCoin"):
            raise _params_error("marketUnit invalid")
        in_quote = unit == "quoteCoin"
        return Placement(symbol=symbol, side=order_side, order_type=OrderType.MARKET, time_in_force=TimeInForce.IOC,
                         quantity=None if in_quote else qty, quote_quantity=qty if in_quote else None,
                         client_order_id=link_id)
    price = _decimal(params, "price")
    if price is None:
        raise _params_error("price is required for a Limit order")
    return Placement(symbol=symbol, side=order_side, order_type=OrderType.LIMIT, time_in_force=tif,
                     quantity=qty, price=price, client_order_id=link_id, post_only=post_only)


def _book_error(exc: BookError) -> BybitError:
    return {
        Rejection.UNKNOWN_SYMBOL: BybitError(170121, "Invalid symbol."),
        Rejection.PRICE_FILTER: BybitError(170134, "Order price has too many decimals."),
        Rejection.LOT_SIZE: BybitError(170137, "Order quantity has too many decimals."),
        Rejection.MIN_QTY: BybitError(170136, "Order quantity lower than the minimum."),
        Rejection.MAX_QTY: BybitError(170135, "Order quantity exceeded the upper limit."),
        Rejection.MIN_NOTIONAL: BybitError(170140, "Order value exceeded lower limit."),
        Rejection.INSUFFICIENT_BALANCE: BybitError(170131, "Insufficient balance."),
        Rejection.DUPLICATE_CLIENT_ID: BybitError(110072, "OrderLinkedID is duplicate"),
        Rejection.UNKNOWN_ORDER: BybitError(110001, "Order does not exist."),
        Rejection.ORDER_CLOSED: BybitError(110001, "order not exists or too late to cancel/replace"),
        Rejection.INVALID_AMEND: BybitError(10001, f"params error: {exc.detail}"),
    }.get(exc.rejection, BybitError(10001, exc.detail or exc.rejection.value))


# -- JSON shapes -------------------------------------------------------------------------------

def _instrument(symbol: str) -> dict[str, Any]:
    market = simulated_market(symbol)
    assert market is not None
    return {
        "symbol": venue_symbol(symbol), "baseCoin": market.base, "quoteCoin": market.quote, "innovation": "0",
        "status": "Trading", "marginTrading": "none", "stTag": "0",
        "lotSizeFilter": {
            "basePrecision": _text(market.amount_step), "quotePrecision": "0.00000001",
            "minOrderQty": _text(market.min_amount), "maxOrderQty": _text(max_quantity(market)),
            "minOrderAmt": _text(market.min_notional), "maxOrderAmt": "9000000",
        },
        "priceFilter": {"tickSize": _text(market.price_step)},
        "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.05"},
    }


def _levels(emu: Emulator, symbol: str, limit: int) -> tuple[list[list[str]], list[list[str]]]:
    bids, asks = emu.book.depth(symbol, limit)
    return [[_text(p), _text(q)] for p, q in bids], [[_text(p), _text(q)] for p, q in asks]


def _status(order: EmuOrder) -> str:
    status = order.status
    if status in (VenueOrderStatus.CANCELLED, VenueOrderStatus.EXPIRED):
        return "PartiallyFilledCanceled" if order.filled else "Cancelled"
    return {VenueOrderStatus.NEW: "New", VenueOrderStatus.PARTIALLY_FILLED: "PartiallyFilled",
            VenueOrderStatus.FILLED: "Filled", VenueOrderStatus.REJECTED: "Rejected"}[status]


def _order_json(order: EmuOrder) -> dict[str, Any]:
    p = order.placement
    in_quote = p.quote_quantity is not None
    remaining = Decimal(0) if not order.is_open else order.sim.remaining
    fees = order.fees
    return {
        "orderId": str(order.id), "orderLinkId": p.client_order_id, "blockTradeId": "",
        "symbol": venue_symbol(p.symbol), "price": _text(order.price), "qty": _text(p.quote_quantity if in_quote
                                                                                   else order.quantity),
        "side": p.side.value.capitalize(), "isLeverage": "0", "positionIdx": 0, "orderStatus": _status(order),
        "cancelType": "CancelByUser" if order.status == VenueOrderStatus.CANCELLED else "UNKNOWN",
        "rejectReason": "EC_PostOnlyWillTakeLiquidity" if p.post_only and order.sim.reason else "EC_NoError",
        "avgPrice": _text(order.average_price) if order.filled else "",
        "leavesQty": _text(remaining), "leavesValue": _text(remaining * (order.price or Decimal(0))),
        "cumExecQty": _text(order.filled), "cumExecValue": _text(order.filled_quote),
        "cumExecFee": _text(sum(fees.values(), Decimal(0))), "cumFeeDetail": {a: _text(f) for a, f in fees.items()},
        "timeInForce": "PostOnly" if p.post_only else p.time_in_force.value,
        "orderType": p.order_type.value.capitalize(), "stopOrderType": "", "orderIv": "", "marketUnit":
            ("quoteCoin" if in_quote else "baseCoin") if p.order_type == OrderType.MARKET else "",
        "triggerPrice": "0", "takeProfit": "0", "stopLoss": "0", "tpTriggerBy": "", "slTriggerBy": "",
        "triggerDirection": 0, "triggerBy": "", "lastPriceOnCreated": "", "reduceOnly": False,
        "closeOnTrigger": False, "smpType": "None", "smpGroup": 0, "smpOrderId": "", "tpslMode": "",
        "tpLimitPrice": "", "slLimitPrice": "", "placeType": "",
        "createdTime": str(order.created_ms), "updatedTime": str(order.updated_ms),
    }


def _execution_json(trade: Trade) -> dict[str, Any]:
    order = trade.order
    p = order.placement
    return {
        "symbol": venue_symbol(p.symbol), "orderId": str(order.id), "orderLinkId": p.client_order_id,
        "side": p.side.value.capitalize(), "orderPrice": _text(order.price), "orderQty": _text(order.quantity),
        "leavesQty": _text(order.sim.remaining if order.is_open else Decimal(0)),
        "orderType": p.order_type.value.capitalize(), "stopOrderType": "",
        "execFee": _text(trade.fee), "feeCurrency": trade.fee_asset, "execId": str(trade.id),
        "execPrice": _text(trade.fill.price), "execQty": _text(trade.fill.quantity), "execType": "Trade",
        "execValue": _text(trade.quote_quantity), "execTime": str(trade.time_ms), "isMaker": trade.maker,
        "feeRate": _text(trade.fee / (trade.fill.quantity if p.side == Side.BUY else trade.quote_quantity)),
        "tradeIv": "", "markIv": "", "markPrice": _text(trade.fill.price), "indexPrice": "",
        "underlyingPrice": "", "blockTradeId": "", "closedSize": "", "seq": trade.id,
    }
