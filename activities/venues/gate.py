"""The gate every request to a direct venue passes: pause, circuit breaker, shared rate limits.

All state is in Redis, keyed by exchange and account, so every worker replica (and the API, which
shows it in /readyz and /metrics) sees the same gate, and the clock is Redis's own (`TIME`), so
replicas with drifting clocks still agree. One Lua script decides each admission atomically:

1. Pause: a 429 or 418 from the venue (with its Retry-After or ban time) pauses the account for
   everyone until then. Nothing is sent while paused.
2. Circuit breaker: after `failure_threshold` consecutive failures (network errors, timeouts, 5xx;
   not rejections) the circuit opens for `open_seconds`; then one request at a time goes through as
   a half-open probe: its success closes the circuit, its failure opens it again.
3. Order placements: at most `rate_limit_orders` in any sliding window of `rate_limit_window_ms`
   (plus a small margin for the time between admission and arrival at the venue), counted in a
   sorted set of admission times: exact, unlike a token bucket that lets twice the rate through
   across a window boundary.
4. Request weight: a GCRA bucket refilled at the exchange's own rate (ccxt's `rateLimit`, whose
   per-endpoint `cost` is the exchange's request weight), one second of burst. Weight is reserved
   in arrival order, except for background requests (the batched poller's listings and the orphan
   sweep's calls, which no order waits on): they take weight only when it is free now and leave a
   reserve for the order path, so an order never queues behind a heavy listing; after
   BACKGROUND_GRACE_MS of waiting they queue like the rest, so a steady stream of orders cannot
   starve fill tracking.

A request that would have to wait longer than `max_wait_ms` is not sent: the caller gets
VenueError(RATE_LIMITED or CIRCUIT_OPEN, retry_after_s) and the order workflow waits durably.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from activities.venues import VenueError
from oms.venue import VenueErrorType

# KEYS: pause, orders window, weight TAT, breaker hash
# ARGV: is_order, order_limit, window_ms, cost, weight_per_ms, burst, member, probe_ms, patience_ms,
#       reserve (weight a background request must leave free; -1: not a background request)
# -> {verdict, wait_ms}; verdict: ok | probe (send after wait_ms) | paused | open | wait (ask again)
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return {'paused', paused - now} end
local verdict = 'ok'
local state = redis.call('HGET', KEYS[4], 'state') or 'closed'
if state ~= 'closed' then
  local open_until = tonumber(redis.call('HGET', KEYS[4], 'open_until') or '0')
  if state == 'open' and now < open_until then return {'open', open_until - now} end
  local probe_until = tonumber(redis.call('HGET', KEYS[4], 'probe_until') or '0')
  if probe_until > now then return {'open', probe_until - now} end
  verdict = 'probe'
end
-- Weight is reserved in arrival order: a heavy request that fits the caller's patience takes its
-- place in the queue now (later light ones wait behind it) and is sent after `send_in`. Send times
-- only grow with each admission, so every order already planned is at or before this one's.
local rate = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[4]) / rate
local send_in = math.ceil(math.max(0, new_tat - tonumber(ARGV[6]) / rate - now))
local reserve = tonumber(ARGV[10])
if reserve >= 0 then
  -- Background: nothing reserved ahead of the order path; ask again once the weight is free.
  local short = new_tat - (tonumber(ARGV[6]) - reserve) / rate - now
  if short > 0 then return {'wait', math.ceil(short)} end
end
local window = tonumber(ARGV[3])
if ARGV[1] == '1' then
  -- An order counts when it is sent, not when it is admitted: check the window ending then.
  local at = now + send_in
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  local planned = redis.call('ZRANGEBYSCORE', KEYS[2], string.format('(%d', at - window), '+inf', 'WITHSCORES')
  if #planned / 2 >= tonumber(ARGV[2]) then
    return {'wait', math.max(send_in, tonumber(planned[2]) + window - now + 1)}
  end
end
if send_in > tonumber(ARGV[9]) then return {'wait', send_in} end
if ARGV[1] == '1' then
  redis.call('ZADD', KEYS[2], now + send_in, ARGV[7])
  redis.call('PEXPIRE', KEYS[2], window * 2 + send_in)
end
redis.call('SET', KEYS[3], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
if verdict == 'probe' then
  redis.call('HSET', KEYS[4], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[8]) + send_in)
end
return {verdict, math.ceil(send_in)}
"""

# KEYS: breaker hash; ARGV: ok (1/0), threshold, open_ms, error -> state after
_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[1] == '1' then
  if state ~= 'closed' or redis.call('HGET', KEYS[1], 'failures') ~= '0' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', '0', 'probe_until', '0')
  end
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4])
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[3]), 'probe_until', '0')
  redis.call('HINCRBY', KEYS[1], 'opened', 1)
  return 'open'
end
return state
"""

# KEYS: pause, pause reason; ARGV: pause ms, reason -> the pause's end (ms), extended, never shortened
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local target = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if target > current then
  redis.call('SET', KEYS[1], tostring(target), 'PX', tonumber(ARGV[1]))
  redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[1]))
  redis.call('INCR', KEYS[1] .. ':count')
  return target
end
return current
"""


# How long the current task may wait in the gate, when it is not an order's venue call (whose
# budget is `max_wait_ms`, inside the workflow's timeout): e.g. the batched poller's heavy listing.
PATIENCE_MS: contextvars.ContextVar[int | None] = contextvars.ContextVar("gate_patience_ms", default=None)
# Whether the current task's requests are background ones (no order waits on them): see the module
# docstring, point 4, and `background` below.
BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("gate_background", default=False)
BACKGROUND_GRACE_MS = 2000  # how long a background request yields before it queues like the rest
BACKGROUND_RESERVE_SHARE = 0.1  # of the one-second burst, left free for the order path


@contextlib.contextmanager
def patience(ms: int):
    """Let this task's requests wait up to `ms` in the gate (never less than they already may)."""
    token = PATIENCE_MS.set(max(PATIENCE_MS.get() or 0, ms))
    try:
        yield
    finally:
        PATIENCE_MS.reset(token)


@contextlib.contextmanager
def background(patience_ms: int):
    """Requests made inside are background ones that may wait up to `patience_ms` in the gate: the
    fill poller's listings, the orphan sweep's calls (no order waits on them)."""
    token = BACKGROUND.set(True)
    try:
        with patience(patience_ms):
            yield
    finally:
        BACKGROUND.reset(token)


class RequestKind(StrEnum):
    ORDER = "order"  # places an order (create, amend): counts against rate_limit_orders
    OTHER = "other"  # reads and cancels: weight only


class Verdict(StrEnum):
    OK = "ok"
    PROBE = "probe"  # the half-open breaker's one trial request


@dataclass(frozen=True)
class GateLimits:
    orders: int  # order placements allowed ...
    window_ms: int  # ... in any window this long
    weight_per_s: float  # request weight refilled per second (the exchange's own limit)
    failure_threshold: int
    open_s: float
    max_wait_ms: int  # wait at most this long in the gate; beyond, tell the caller to come back
    probe_timeout_ms: int  # a probe that never reports (its worker died) frees the slot after this


def window_margin_ms(window_ms: int) -> int:
    """Headroom for the time between admission here and arrival at the venue (event loop, TLS,
    network): without it, a request delayed in flight can land inside the venue's next window."""
    return max(50, window_ms // 10)


def _keys(exchange: str, account: str) -> dict[str, str]:
    prefix = f"venue:{exchange}:{account}"
    return {"pause": f"{prefix}:pause", "pause_reason": f"{prefix}:pause:reason",
            "orders": f"{prefix}:orders", "weight": f"{prefix}:weight", "breaker": f"{prefix}:breaker"}


class VenueGate:
    def __init__(self, redis: aioredis.Redis, exchange: str, account: str, limits: GateLimits) -> None:
        self.exchange, self.account, self.limits = exchange, account, limits
        self._keys = _keys(exchange, account)
        self._admit = redis.register_script(_ADMIT)
        self._record = redis.register_script(_RECORD)
        self._pause = redis.register_script(_PAUSE)
        self.waits = 0  # times this process waited in the gate (for tests and metrics)

    async def admit(self, kind: RequestKind, cost: float) -> Verdict:
        """Wait for the right to send one request; raises VenueError if that would take too long."""
        k, lim = self._keys, self.limits
        patience = PATIENCE_MS.get() or lim.max_wait_ms
        yielding = BACKGROUND.get()
        waited = 0
        while True:
            reserve = -1.0
            if yielding and waited < BACKGROUND_GRACE_MS:
                reserve = max(0.0, min(BACKGROUND_RESERVE_SHARE * lim.weight_per_s, lim.weight_per_s - cost))
            verdict, wait_ms = await self._admit(
                keys=[k["pause"], k["orders"], k["weight"], k["breaker"]],
                args=[1 if kind == RequestKind.ORDER else 0, lim.orders, lim.window_ms + window_margin_ms(lim.window_ms),
                      max(cost, 0.001), lim.weight_per_s / 1000, lim.weight_per_s, uuid.uuid4().hex,
                      lim.probe_timeout_ms, max(0, patience - waited), reserve])
            verdict, wait_ms = _text(verdict), int(wait_ms)
            if verdict in (Verdict.OK, Verdict.PROBE):
                if wait_ms > 0:  # our weight is reserved: send when it is due
                    self.waits += 1
                    await asyncio.sleep(wait_ms / 1000)
                return Verdict(verdict)
            if verdict == "paused":
                raise VenueError(VenueErrorType.RATE_LIMITED,
                                 f"{self.exchange} paused after a rate-limit answer", retry_after_s=wait_ms / 1000)
            if verdict == "open":
                raise VenueError(VenueErrorType.CIRCUIT_OPEN,
                                 f"{self.exchange} circuit breaker open", retry_after_s=wait_ms / 1000)
            if waited + wait_ms > patience:
                raise VenueError(VenueErrorType.RATE_LIMITED,
                                 f"{self.exchange} {kind.value} rate limit reached", retry_after_s=wait_ms / 1000)
            self.waits += 1
            waited += wait_ms
            await asyncio.sleep(wait_ms / 1000)

    async def succeeded(self) -> None:
        """The venue answered (even with a business error such as a rejection): it is healthy."""
        await self._record(keys=[self._keys["breaker"]], args=[1, self.limits.failure_threshold,
                                                                 int(self.limits.open_s * 1000), ""])

    async def failed(self, error: str) -> str:
        """A network error, timeout or 5xx; returns the breaker state after it."""
        return _text(await self._record(keys=[self._keys["breaker"]],
                                        args=[0, self.limits.failure_threshold, int(self.limits.open_s * 1000),
                                              error[:200]]))

    async def pause(self, seconds: float, reason: str) -> None:
        """Stop every replica from sending to this account for `seconds` (a 429 or a 418 ban)."""
        await self._pause(keys=[self._keys["pause"], self._keys["pause_reason"]],
                          args=[max(1, math.ceil(seconds * 1000)), reason[:200]])


async def gate_status(redis: aioredis.Redis, exchange: str, account: str = "default") -> dict:
    """What the gate of one account looks like now: for /readyz, /metrics and operators."""
    k = _keys(exchange, account)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(k["breaker"])
        pipe.pttl(k["pause"])
        pipe.get(k["pause_reason"])
        pipe.get(f"{k['pause']}:count")
        pipe.time()
        breaker, pause_ms, reason, pauses, (seconds, micros) = await pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    state = _text(breaker.get("state", "closed"))
    open_until = int(breaker.get("open_until", 0) or 0)
    if state == "open" and now_ms >= open_until:
        state = "half_open"  # the next request will be the probe
    return {
        "circuit": state,
        "failures": int(breaker.get("failures", 0) or 0),
        "opened": int(breaker.get("opened", 0) or 0),
        "open_for_s": round(max(0, open_until - now_ms) / 1000, 3) if state == "open" else 0.0,
        "last_error": breaker.get("last_error") or None,
        "paused_for_s": round(max(0, pause_ms) / 1000, 3),
        "pause_reason": reason if pause_ms and pause_ms > 0 else None,
        "pauses": int(pauses or 0),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_BANNED_UNTIL = re.compile(r"banned until (\d{13})")


def retry_after_s(status: int | None, headers: dict[str, str] | None, body: str | None, now_ms: int) -> float:
    """How long a rate-limit answer asks us to stay away: Retry-After (seconds), Binance's
    'banned until <ms>' message, or Bybit's X-Bapi-Limit-Reset-Timestamp; else a default."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    candidates = []
    if (value := lowered.get("retry-after")) and value.strip().isdigit():
        candidates.append(float(value))
    if body and (match := _BANNED_UNTIL.search(body)):
        candidates.append((int(match.group(1)) - now_ms) / 1000)
    if (value := lowered.get("x-bapi-limit-reset-timestamp")) and value.strip().isdigit():
        candidates.append((int(value) - now_ms) / 1000)
    if candidates:
        return max(1.0, max(candidates))
    return 60.0 if status == 418 else 1.0
