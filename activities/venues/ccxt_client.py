"""A ccxt async client whose every HTTP request passes the shared `VenueGate`.

ccxt funnels each request through `fetch2(path, api, method, params, config)`, with the
endpoint's cost (the exchange's request weight) in `config`. Overriding it here is the one place
where a request is admitted (pause, breaker, rate limits), and where its outcome is reported: a
429/418 pauses the account for every replica, a network error or 5xx counts against the breaker,
any other answer (a rejection included) proves the venue healthy. ccxt's own in-process throttle
is off: the shared gate replaces it.
"""
from __future__ import annotations

import contextvars
import time
from typing import Any

import aiohttp
import ccxt.async_support as ccxt

from activities.venues.gate import RequestKind, VenueGate, retry_after_s

# The last HTTP answer seen by this task: ccxt raises from inside `fetch`, after `handle_errors`
# saw the status, headers and body; a ContextVar keeps concurrent requests apart.
_LAST_ANSWER: contextvars.ContextVar[tuple[int, dict, str] | None] = contextvars.ContextVar("ccxt_answer", default=None)


# Siblings in ccxt 4.5 (both NetworkError), not parent and child: catch both.
RATE_LIMIT_ERRORS = (ccxt.DDoSProtection, ccxt.RateLimitExceeded)


def is_nothing_sent(error: BaseException) -> bool:
    """True when the connection could not even be opened: the venue cannot have seen the request."""
    return isinstance(error.__cause__, aiohttp.ClientConnectorError)


class GatedMixin:
    """Mixed into a ccxt exchange class; needs `gate` and `order_endpoints` set after construction."""

    gate: VenueGate
    order_endpoints: frozenset[tuple[str, str]]  # (METHOD, path) pairs that place an order

    def handle_errors(self, code, reason, url, method, headers, body, response, request_headers, request_body):
        _LAST_ANSWER.set((code, headers or {}, body or ""))
        return super().handle_errors(code, reason, url, method, headers, body, response, request_headers,
                                     request_body)

    async def fetch2(self, path: str, api: Any = "public", method: str = "GET", params: dict | None = None,
                     config: dict | None = None):
        params, config = params or {}, config or {}
        cost = self.calculate_rate_limiter_cost(api, method, path, params, config)
        kind = RequestKind.ORDER if (method.upper(), path) in self.order_endpoints else RequestKind.OTHER
        await self.gate.admit(kind, float(cost or 1))
        _LAST_ANSWER.set(None)
        try:
            response = await super().fetch2(path, api, method, params, config)
        except RATE_LIMIT_ERRORS as error:  # 429, 418, Bybit 10006/403: stay away, all of us
            status, headers, body = _LAST_ANSWER.get() or (None, {}, str(error))
            await self.gate.pause(retry_after_s(status, headers, body, int(time.time() * 1000)), str(error))
            await self.gate.succeeded()  # the venue is up, only busy
            raise
        except ccxt.InvalidNonce:  # our clock or a request delayed past its receive window: venue is fine
            await self.gate.succeeded()
            raise
        except (ccxt.NetworkError, ccxt.OperationFailed) as error:
            await self.gate.failed(f"{type(error).__name__}: {str(error)[:150]}")
            raise
        except ccxt.BaseError:
            await self.gate.succeeded()
            raise
        await self.gate.succeeded()
        return response


class GatedBinance(GatedMixin, ccxt.binance):
    pass


class GatedBybit(GatedMixin, ccxt.bybit):
    pass


CLIENT_CLASSES: dict[str, type] = {"binance": GatedBinance, "bybit": GatedBybit}

