"""What differs between Binance spot and Bybit v5 spot behind ccxt's unified API.

Each dialect knows its ccxt options, which endpoints place orders (for the order rate limit), how to
look an order up by our client order id, how the venue says "duplicate client id", and whether it
amends natively. Everything else goes through ccxt's unified methods.
"""
from __future__ import annotations

from typing import Any

import ccxt.async_support as ccxt

from oms.venue_status import StatusRule

ORDERS_PAGE = 1000  # Binance allOrders' largest page
O, F, C, E, R = StatusRule.OPEN, StatusRule.FILLED, StatusRule.CANCELLED, StatusRule.EXPIRED, StatusRule.REJECTED

# Binance spot `status` (GET/POST/DELETE /api/v3/order, openOrders, allOrders). PENDING_CANCEL is
# documented as unused but listed: the order still works until the venue says otherwise.
# EXPIRED_IN_MATCH: expired by self-trade prevention, possibly after fills.
BINANCE_STATUS: dict[str, StatusRule] = {
    "NEW": O, "PENDING_NEW": O, "PARTIALLY_FILLED": O, "PENDING_CANCEL": O, "FILLED": F,
    "CANCELED": C, "REJECTED": R, "EXPIRED": E, "EXPIRED_IN_MATCH": E,
}
# Bybit v5 `orderStatus` (order/realtime, order/history). Untriggered/Triggered/Active are the
# conditional-order states (still working); Deactivated is a conditional order cancelled before it
# triggered; PartiallyFilledCanceled is a market or IOC remainder ended after fills (ccxt says `closed`).
BYBIT_STATUS: dict[str, StatusRule] = {
    "New": O, "PartiallyFilled": O, "Untriggered": O, "Triggered": O, "Active": O, "Filled": F,
    "Cancelled": C, "PartiallyFilledCanceled": C, "Deactivated": C, "Rejected": R,
}


class Dialect:
    name: str
    order_endpoints: frozenset[tuple[str, str]]
    open_orders_cost = 1.0  # ccxt cost (request weight) of one open-orders listing
    native_amend = False
    duplicate_markers: tuple[str, ...] = ()
    status_table: dict[str, StatusRule] = {}
    raw_status_field = "status"

    def raw_status(self, order: dict) -> str | None:
        """The venue's own status word from ccxt's `info` (ccxt's unified status loses detail)."""
        info = order.get("info") or {}
        value = info.get(self.raw_status_field) if isinstance(info, dict) else None
        return str(value) if value is not None else None

    def options(self, recv_window_ms: int) -> dict[str, Any]:
        raise NotImplementedError

    def rewrite_urls(self, urls: Any, base_url: str) -> Any:
        """Point every REST URL of the client at `base_url` (an emulator, a proxy, staging)."""
        base = base_url.rstrip("/")
        if isinstance(urls, dict):
            return {key: self.rewrite_urls(value, base) for key, value in urls.items()}
        if isinstance(urls, str) and urls.startswith("http"):
            scheme_end = urls.index("//") + 2
            path_start = urls.find("/", scheme_end)
            return base + ("" if path_start < 0 else urls[path_start:])
        return urls

    def is_duplicate(self, error: ccxt.BaseError) -> bool:
        text = str(error)
        return isinstance(error, ccxt.InvalidOrder) and any(marker in text for marker in self.duplicate_markers)

    def order_params(self, client_order_id: str, time_in_force: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": client_order_id}
        if time_in_force:
            params["timeInForce"] = time_in_force
        return params

    async def fetch_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict | None:
        raise NotImplementedError

    async def cancel_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict:
        return await client.cancel_order(None, symbol, {"clientOrderId": client_order_id})

    async def amend(self, client: ccxt.Exchange, order: dict, quantity: str | None, price: str | None) -> dict:
        raise ccxt.NotSupported(f"{self.name} has no native amend")

    async def open_orders(self, client: ccxt.Exchange) -> list[dict]:
        return await client.fetch_open_orders()

    async def orders_since(self, client: ccxt.Exchange, symbols: list[str], since_ms: int) -> list[dict]:
        """Orders created at or after `since_ms` (any status) on `symbols`, or account-wide."""
        raise NotImplementedError


class BinanceDialect(Dialect):
    name = "binance"
    order_endpoints = frozenset({("POST", "order"), ("POST", "order/cancelReplace")})
    duplicate_markers = ("Duplicate order sent",)
    open_orders_cost = 16.0  # GET /api/v3/openOrders without a symbol: weight 80
    status_table = BINANCE_STATUS

    def options(self, recv_window_ms: int) -> dict[str, Any]:
        return {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                "fetchMargins": False, "recvWindow": recv_window_ms,
                "warnOnFetchOpenOrdersWithoutSymbol": False}

    async def fetch_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict | None:
        try:
            return await client.fetch_order(None, symbol, {"origClientOrderId": client_order_id})
        except ccxt.OrderNotFound:
            return None

    async def cancel_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict:
        return await client.cancel_order(None, symbol, {"origClientOrderId": client_order_id})

    async def orders_since(self, client: ccxt.Exchange, symbols: list[str], since_ms: int) -> list[dict]:
        # GET /api/v3/allOrders needs a symbol (weight 20 each): one call per traded symbol, paged.
        orders: list[dict] = []
        for symbol in symbols:
            start = since_ms
            while True:
                page = await client.fetch_orders(symbol, since=start, limit=ORDERS_PAGE)
                orders += page
                if len(page) < ORDERS_PAGE:
                    break
                start = max(int(o.get("timestamp") or start) for o in page) + 1
        return orders


class BybitDialect(Dialect):
    name = "bybit"
    order_endpoints = frozenset({("POST", "v5/order/create"), ("POST", "v5/order/amend")})
    duplicate_markers = ("110072", "OrderLinkedID is duplicate")
    native_amend = True
    open_orders_cost = 5.0  # one page of GET /v5/order/realtime
    status_table = BYBIT_STATUS
    raw_status_field = "orderStatus"

    def options(self, recv_window_ms: int) -> dict[str, Any]:
        # A unified trading account (UTA) is assumed, as for every Bybit account opened since 2023:
        # stating it spares ccxt's probing calls before the first order.
        return {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                "recvWindow": recv_window_ms, "enableUnifiedAccount": True, "enableUnifiedMargin": False,
                "createMarketBuyOrderRequiresPrice": False}

    def order_params(self, client_order_id: str, time_in_force: str | None) -> dict[str, Any]:
        params = super().order_params(client_order_id, time_in_force)
        params["marketUnit"] = "baseCoin"  # a spot market buy is sized in base units, like ours
        return params

    async def fetch_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict | None:
        market = client.market(symbol)
        request = {"category": "spot", "symbol": market["id"], "orderLinkId": client_order_id}
        # Open orders (and recently closed ones) first; older closed ones are in the history.
        for endpoint in (client.private_get_v5_order_realtime, client.private_get_v5_order_history):
            response = await endpoint(request)
            rows = (response.get("result") or {}).get("list") or []
            if rows:
                return client.parse_order(rows[0], market)
        return None

    async def cancel_by_client_id(self, client: ccxt.Exchange, symbol: str, client_order_id: str) -> dict:
        market = client.market(symbol)
        return await client.private_post_v5_order_cancel(
            {"category": "spot", "symbol": market["id"], "orderLinkId": client_order_id})

    async def amend(self, client: ccxt.Exchange, order: dict, quantity: str | None, price: str | None) -> dict:
        market = client.market(order["symbol"])
        request: dict[str, Any] = {"category": "spot", "symbol": market["id"], "orderLinkId": order["clientOrderId"]}
        if quantity is not None:
            request["qty"] = client.amount_to_precision(order["symbol"], quantity)
        if price is not None:
            request["price"] = client.price_to_precision(order["symbol"], price)
        return await client.private_post_v5_order_amend(request)

    async def orders_since(self, client: ccxt.Exchange, symbols: list[str], since_ms: int) -> list[dict]:
        return await self._pages(client, client.private_get_v5_order_history, {"startTime": since_ms})

    async def open_orders(self, client: ccxt.Exchange) -> list[dict]:
        return await self._pages(client, client.private_get_v5_order_realtime, {})

    async def _pages(self, client: ccxt.Exchange, endpoint: Any, extra: dict[str, Any]) -> list[dict]:
        orders: list[dict] = []
        cursor = None
        while True:  # Bybit pages open orders 50 at a time
            request: dict[str, Any] = {"category": "spot", "limit": 50, **extra}
            if cursor:
                request["cursor"] = cursor
            response = await endpoint(request)
            result = response.get("result") or {}
            orders += [client.parse_order(row) for row in result.get("list") or []]
            cursor = result.get("nextPageCursor")
            if not cursor or not result.get("list"):
                return orders


DIALECTS: dict[str, Dialect] = {"binance": BinanceDialect(), "bybit": BybitDialect()}
