"""Account limits that need shared state: the daily order cap, held in Redis across every
concurrent order and worker replica. Reserving is idempotent per order id, so a retried activity
(or a replayed workflow) never counts an order twice."""
from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel
from temporalio import activity

# KEYS[1] the day's set of order ids; ARGV: order id, limit, ttl seconds -> {allowed, count}
_RESERVE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return {1, redis.call('SCARD', KEYS[1])}
end
local count = redis.call('SCARD', KEYS[1])
if count >= tonumber(ARGV[2]) then return {0, count} end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, count + 1}
"""


class DailyOrderReservation(BaseModel):
    account: str
    order_id: str
    day: str  # YYYY-MM-DD (UTC), from the workflow's deterministic clock
    limit: int


class DailyOrderDecision(BaseModel):
    allowed: bool
    count: int


def daily_orders_key(request: DailyOrderReservation) -> str:
    return f"limits:daily_orders:{request.account}:{request.day}"


class DailyOrderLimit:
    """The shared daily cap: reserve a slot for an order (idempotent), release it if it never went out."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, request: DailyOrderReservation) -> DailyOrderDecision:
        allowed, count = await self._reserve(keys=[daily_orders_key(request)],
                                             args=[request.order_id, request.limit, 2 * 86400])
        return DailyOrderDecision(allowed=bool(allowed), count=int(count))

    async def release(self, request: DailyOrderReservation, client=None) -> None:
        await (client or self._redis).srem(daily_orders_key(request), request.order_id)


class AccountLimitActivities:
    """The reservation as its own activity: what orders prepared before it moved into prepare_order
    replay against (their recorded OrderContext has no daily_decision)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._limit = DailyOrderLimit(redis)

    @activity.defn(name="reserve_daily_order")
    async def reserve_daily_order(self, request: DailyOrderReservation) -> DailyOrderDecision:
        return await self._limit.reserve(request)
