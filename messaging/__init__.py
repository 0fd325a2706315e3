"""Messaging: where signals come from and where order events go, behind one interface.

Two transports implement it, chosen by `messaging.type`:
- `redis` (the local default, messaging/redis_streams.py): signals from the stream `signals` through
  the consumer group `order-management`, dead letters on `signals.dead`, events on `order_events`
  and `executions`.
- `pubsub` (GKE, messaging/pubsub.py): signals from subscription
  `<topic_prefix>signals-order-management` on topic `<topic_prefix>signals`, dead letters on
  `<topic_prefix>signals-dead`, events on `<topic_prefix>order-events` and `<topic_prefix>executions`.

The consumer (workers/consumer.py) owns what happens to a signal (validate, start, dead-letter,
retry); a `SignalSource` only moves messages: hand over a batch, acknowledge, dead-letter. The
publish activity hands an order's new events and fills to an `EventSink`, which publishes each at
most once per event id / fill id as far as its transport allows (each implementation says how far).
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import redis.asyncio as aioredis

from config.settings import Settings
from oms.events import OrderEvent
from oms.models import Fill


@dataclass
class Delivery:
    """One signal message as a source hands it over."""

    message_id: str  # the transport's id (stream entry id, Pub/Sub message id): names the dead letter
    payload: bytes | None  # the signal as received; None when the message carries none
    received_at: datetime | None  # when it reached the transport: a signal without created_at is aged from it
    described: bytes = b""  # with payload None: what the message did carry, kept by its dead letter
    missing_reason: str = ""  # with payload None: why there is no signal
    handle: Any = None  # the transport's own message object (acknowledged through it)


class SignalSource(Protocol):
    """Signals in. A message is acknowledged only by `ack` or `dead_letter`; one never acknowledged
    (its consumer died) is delivered again, to this or another consumer."""

    name: str  # the stream or subscription, for logs and dead letters
    transient_errors: tuple[type[BaseException], ...]  # transport outages: wait and resume

    async def receive(self, stop: asyncio.Event) -> list[Delivery]:
        """The next batch (at most messaging.batch_size), or [] after about a second without any."""

    @property
    def redelivered(self) -> int:
        """Messages handed over again after a consumer left them unacknowledged (a metric)."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Give back messages this consumer will not finish (it is stopping, or their batch
        failed): another consumer, or this one, gets them again. Those already acknowledged stay so."""

    async def dead_letter(self, delivery: Delivery, payload: bytes, reason: str) -> None:
        """Put the message aside with its reason and payload (idempotent per message id); the
        caller then acknowledges it."""

    async def close(self) -> None: ...


class EventSink(Protocol):
    """Order events and fills out: `order_events` / `executions` (Redis) or their Pub/Sub topics."""

    async def publish(self, events: Sequence[OrderEvent], fills: Sequence[Fill]) -> int:
        """Publish each item not published before; returns how many were new. Raises on a
        transport failure (the activity retries; what was published is not published again)."""

    async def close(self) -> None: ...


def signal_source(settings: Settings, redis: aioredis.Redis, name: str) -> SignalSource:
    """The configured transport's signal source for consumer `name`."""
    if settings.messaging.type == "pubsub":
        from messaging.pubsub import PubSubSignalSource  # the Google client only where it is used

        return PubSubSignalSource(settings, redis, name)
    from messaging.redis_streams import RedisSignalSource

    return RedisSignalSource(settings, redis, name)


def event_sink(settings: Settings, redis: aioredis.Redis) -> EventSink:
    if settings.messaging.type == "pubsub":
        from messaging.pubsub import PubSubEventSink

        return PubSubEventSink(settings, redis)
    from messaging.redis_streams import RedisEventSink

    return RedisEventSink(redis)


async def publish_signals(settings: Settings, redis: aioredis.Redis, payloads: Sequence[str]) -> str:
    """Put signals (JSON text) where the consumers read them; returns where: the stream's name or
    the topic's path."""
    if settings.messaging.type == "pubsub":
        from messaging.pubsub import publish_signals as to_pubsub

        return await to_pubsub(settings, payloads)
    from messaging.redis_streams import publish_signals as to_stream

    return await to_stream(settings, redis, payloads)


def signals_destination(settings: Settings) -> str:
    """Where signals are published, for people: "stream 'signals'" or "topic 'projects/p/topics/signals'"."""
    m = settings.messaging
    if m.type == "pubsub":
        return f"topic 'projects/{m.project}/topics/{m.topic_prefix}{m.signals_stream}'"
    return f"stream {m.signals_stream!r}"
