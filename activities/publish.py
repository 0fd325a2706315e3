"""Publishing what an order did: transitions to `order_events`, fills to `executions` (through the
configured transport's EventSink: Redis streams or Pub/Sub topics, see messaging/), the snapshot
to the order cache. Each item once per event id / fill id, as far as the transport allows."""
from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from temporalio import activity

from activities.limits import DailyOrderLimit, DailyOrderReservation
from config.settings import Settings
from messaging import EventSink, event_sink
from oms.events import OrderEvent, client_order_key, order_cache_key

CLIENT_ID_TTL_S = 90 * 86400
# Unforeseen order outcomes per exchange (oms.states.record_unforeseen): GET /metrics serves it.
ANOMALIES_KEY = "metrics:order_anomalies"
from oms.models import Fill, OrderSnapshot


class OrderProgress(BaseModel):
    snapshot: OrderSnapshot
    events: list[OrderEvent] = Field(default_factory=list)
    fills: list[Fill] = Field(default_factory=list)
    release_daily: DailyOrderReservation | None = None  # the order ended without going out: free its slot
    anomalies: int = 0  # outcomes the transition table did not foresee since the last progress (a metric)


class PublishActivities:
    def __init__(self, redis: aioredis.Redis, settings: Settings, sink: EventSink | None = None) -> None:
        self._redis = redis
        self._cache = settings.order_cache
        self._sink = sink or event_sink(settings, redis)
        self._daily_limit = DailyOrderLimit(redis)

    @activity.defn(name="record_progress")
    async def record_progress(self, progress: OrderProgress) -> int:
        """Publish new events and fills, refresh the cache. Returns how many items were new."""
        # First: a failed publish fails the attempt before the cache shows what was not published.
        new = await self._sink.publish(progress.events, progress.fills)
        async with self._redis.pipeline(transaction=False) as pipe:
            # The batched poller finds an order's workflow from the venue's client order id.
            pipe.set(client_order_key(progress.snapshot.client_order_id), progress.snapshot.order_id,
                     ex=CLIENT_ID_TTL_S)
            if progress.anomalies:
                pipe.hincrby(ANOMALIES_KEY, progress.snapshot.exchange, progress.anomalies)
            if progress.release_daily is not None:
                await self._daily_limit.release(progress.release_daily, client=pipe)
            if self._cache.enabled:
                pipe.set(order_cache_key(progress.snapshot.order_id), progress.snapshot.model_dump_json(),
                         ex=self._cache.ttl)
            await pipe.execute()
        return new
