"""Publishing what an order did: transitions to `order_events`, fills to `executions`, the
snapshot to the order cache. Each item exactly once (see activities/streams.py)."""
from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from temporalio import activity

from activities.limits import DailyOrderLimit, DailyOrderReservation
from activities.streams import StreamPublisher
from config.settings import Settings
from oms.events import (
    EVENT_FIELD,
    EXECUTION_FIELD,
    EXECUTIONS_STREAM,
    ORDER_EVENTS_STREAM,
    OrderEvent,
    client_order_key,
    order_cache_key,
)

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
    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self._redis = redis
        self._cache = settings.order_cache
        self._streams = StreamPublisher(redis)
        self._daily_limit = DailyOrderLimit(redis)

    @activity.defn(name="record_progress")
    async def record_progress(self, progress: OrderProgress) -> int:
        """Publish new events and fills, refresh the cache. Returns how many items were new."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in progress.events:
                await self._streams.publish_once(ORDER_EVENTS_STREAM, event.event_id,
                                                 {EVENT_FIELD: event.model_dump_json()}, client=pipe)
            for fill in progress.fills:
                await self._streams.publish_once(EXECUTIONS_STREAM, fill.fill_id,
                                                 {EXECUTION_FIELD: fill.model_dump_json()}, client=pipe)
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
            results = await pipe.execute()
        return sum(1 for r in results[: len(progress.events) + len(progress.fills)] if r == 1)
