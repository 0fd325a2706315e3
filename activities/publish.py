"""Publishing what an order did: transitions to `order_events`, fills to `executions`, the
snapshot to the order cache. Exactly once per item: a Lua script sets a marker key with SET NX
and appends only if the marker was new, atomically, so a retried activity or a replayed workflow
never appends an item twice."""
from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from temporalio import activity

from config.settings import Settings
from oms.events import (
    EVENT_FIELD,
    EXECUTION_FIELD,
    EXECUTIONS_STREAM,
    ORDER_EVENTS_STREAM,
    STREAM_MAXLEN,
    OrderEvent,
    order_cache_key,
    published_marker_key,
)
from oms.models import Fill, OrderSnapshot

MARKER_TTL_S = 14 * 86400  # longer than any retry or replay of the same step

# KEYS: marker, stream; ARGV: field, payload, maxlen, ttl -> 1 if appended
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[3]), '*', ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class OrderProgress(BaseModel):
    snapshot: OrderSnapshot
    events: list[OrderEvent] = Field(default_factory=list)
    fills: list[Fill] = Field(default_factory=list)


class PublishActivities:
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._cache = settings.order_cache
        self._publish_once = redis.register_script(_PUBLISH_ONCE)

    @activity.defn(name="record_progress")
    async def record_progress(self, progress: OrderProgress) -> int:
        """Publish new events and fills, refresh the cache. Returns how many items were new."""
        appended = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in progress.events:
                await self._publish_once(
                    keys=[published_marker_key(ORDER_EVENTS_STREAM, event.event_id), ORDER_EVENTS_STREAM],
                    args=[EVENT_FIELD, event.model_dump_json(), STREAM_MAXLEN, MARKER_TTL_S], client=pipe)
            for fill in progress.fills:
                await self._publish_once(
                    keys=[published_marker_key(EXECUTIONS_STREAM, fill.fill_id), EXECUTIONS_STREAM],
                    args=[EXECUTION_FIELD, fill.model_dump_json(), STREAM_MAXLEN, MARKER_TTL_S], client=pipe)
            if self._cache.enabled:
                pipe.set(order_cache_key(progress.snapshot.order_id), progress.snapshot.model_dump_json(),
                         ex=self._cache.ttl)
            results = await pipe.execute()
        appended = sum(1 for r in results[: len(progress.events) + len(progress.fills)] if r == 1)
        return appended
