"""Google Cloud Pub/Sub: the transport on GKE (`messaging.type: pubsub`).

Names, from `messaging.topic_prefix` (P), `messaging.signals_stream` (S, default `signals`) and
`messaging.consumer_group` (G, default `order-management`):
  signals in     topic P+S, subscription P+S-G        dead letters   topic P+S-dead
  order events   topic P+order-events                 fills          topic P+executions
Topics and the subscription are created when missing (the subscription's ack deadline is
`messaging.claim_idle_ms`, between 10 and 600 s); where the service account may not create them
(pre-created on GKE) the refusal is logged and the existing ones are used.

Signals: streaming pull with flow control (`messaging.flow_control_max_messages` / `_bytes`). A
message is acknowledged only after its workflow start is durable (or the order already existed) or
after it is dead-lettered; one whose consumer dies unacknowledged is delivered again after the ack
deadline, and its start then finds the workflow `order-<signal_id>` already there: one order. Our
idempotency never relies on Pub/Sub's exactly-once delivery, nor our dead letters on its
dead-letter policy (the emulator has neither, and neither is needed). The ack deadline is
`messaging.claim_idle_ms`, for the subscription and for each lease extension while a consumer holds
a message (say while Temporal is down and the start is retried with backoff).

A dead letter is one message on P+S-dead: its body is the original payload as received (bytes,
clipped to `messaging.max_payload_bytes`), its attributes `reason` (clipped to Pub/Sub's 1024
bytes per attribute value), `source` (the subscription), `message_id` (of the original), `at`,
`payload_bytes` (original size) and `payload_clipped`. It is also appended to the Redis stream
`signals.dead`, which the recorder writes to the database's dead_letters table with the full reason.

Events and fills: the body is the JSON document (the same one the Redis streams carry), the
ordering key is the order id (so one order's events arrive in order to a subscription with message
ordering on), and the attributes carry `event_id` (events) or `fill_id` (fills) plus `order_id`:
consumers dedupe by them. Publishing once: before publishing, a per-item marker in Redis is
checked; after Pub/Sub confirms the publish, the marker is set. So a retried activity, a replayed
workflow or the orphan sweep never publishes an item whose publish was confirmed. What remains: an
item is published twice only if its activity attempt dies (or Redis fails) between Pub/Sub's
confirmation and the marker, if two attempts of one activity run at once, or if the client resends
a publish whose answer was lost; the copy carries the same id, so consumers deduping by it see
each event and fill exactly once. The items are also appended to the Redis streams
`order_events` and `executions` (exactly once), the recorder's feed for the database.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import redis.asyncio as aioredis
from google.api_core.exceptions import AlreadyExists, GoogleAPICallError, PermissionDenied, RetryError
from google.cloud import pubsub_v1
from redis.exceptions import RedisError

from activities.streams import MARKER_TTL_S, StreamPublisher
from config.settings import Settings
from messaging import Delivery
from messaging.redis_streams import RedisEventSink, append_dead_letter
from oms.events import OrderEvent, published_marker_key
from oms.models import Fill

log = logging.getLogger("tom.pubsub")
ATTRIBUTE_VALUE_MAX_BYTES = 1024  # Pub/Sub's limit per attribute value
RECEIVE_WAIT_S = 1.0


@dataclass(frozen=True)
class PubSubNames:
    project: str
    signals: str
    subscription: str
    dead: str
    order_events: str
    executions: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "PubSubNames":
        m = settings.messaging
        p, s = m.topic_prefix, m.signals_stream
        return cls(project=m.project or "", signals=f"{p}{s}", subscription=f"{p}{s}-{m.consumer_group}",
                   dead=f"{p}{s}-dead", order_events=f"{p}order-events", executions=f"{p}executions")

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.subscription}"


def _create_topics(publisher: pubsub_v1.PublisherClient, names: PubSubNames, topics: Sequence[str]) -> None:
    for topic in topics:
        try:
            publisher.create_topic(name=names.topic(topic))
            log.info("created topic %s", names.topic(topic))
        except AlreadyExists:
            pass
        except PermissionDenied:
            log.warning("may not create topic %s: using it as pre-created", names.topic(topic))


def _create_subscription(subscriber: pubsub_v1.SubscriberClient, names: PubSubNames, ack_deadline_s: int) -> None:
    try:
        subscriber.create_subscription(request={
            "name": names.subscription_path(), "topic": names.topic(names.signals),
            "ack_deadline_seconds": ack_deadline_s})
        log.info("created subscription %s", names.subscription_path())
    except AlreadyExists:
        pass
    except PermissionDenied:
        log.warning("may not create subscription %s: using it as pre-created", names.subscription_path())


def ensure_signal_topology(settings: Settings, publisher: pubsub_v1.PublisherClient | None = None,
                           subscriber: pubsub_v1.SubscriberClient | None = None) -> None:
    """Signals topic, dead-letter topic and the consumers' subscription (blocking calls)."""
    names = PubSubNames.from_settings(settings)
    own_pub, own_sub = publisher is None, subscriber is None
    publisher = publisher or pubsub_v1.PublisherClient()
    subscriber = subscriber or pubsub_v1.SubscriberClient()
    try:
        _create_topics(publisher, names, [names.signals, names.dead])
        _create_subscription(subscriber, names, settings.messaging.claim_idle_ms // 1000)
    finally:
        if own_sub:
            subscriber.close()
        if own_pub:
            publisher.stop()


def _attribute(text: str) -> str:
    """A value within Pub/Sub's attribute limit, cut on a character boundary."""
    raw = text.encode("utf-8")
    return text if len(raw) <= ATTRIBUTE_VALUE_MAX_BYTES else raw[:ATTRIBUTE_VALUE_MAX_BYTES].decode("utf-8", "ignore")


def _marker(topic: str, item_id: str) -> str:
    return published_marker_key(f"pubsub:{topic}", item_id)


@dataclass(frozen=True)
class _Item:
    topic: str
    item_id: str
    ordering_key: str
    body: bytes
    attributes: dict[str, str]


class PubSubEventSink:
    def __init__(self, settings: Settings, redis: aioredis.Redis,
                 publisher: pubsub_v1.PublisherClient | None = None) -> None:
        self._names = PubSubNames.from_settings(settings)
        self._redis = redis
        self._mirror = RedisEventSink(redis)  # the recorder's feed
        self._publisher = publisher or pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
        self._topics_ready = False

    async def publish(self, events: Sequence[OrderEvent], fills: Sequence[Fill]) -> int:
        if not events and not fills:
            return 0
        if not self._topics_ready:
            await asyncio.to_thread(_create_topics, self._publisher, self._names,
                                    [self._names.order_events, self._names.executions])
            self._topics_ready = True
        items = [_Item(self._names.order_events, e.event_id, e.order_id, e.model_dump_json().encode(),
                       {"event_id": e.event_id, "order_id": e.order_id, "state": e.state.value}) for e in events]
        items += [_Item(self._names.executions, f.fill_id, f.order_id, f.model_dump_json().encode(),
                        {"fill_id": f.fill_id, "order_id": f.order_id}) for f in fills]
        new = await self._publish_once(items)
        await self._mirror.publish(events, fills)
        return new

    async def _publish_once(self, items: list[_Item]) -> int:
        seen = await self._redis.mget([_marker(i.topic, i.item_id) for i in items])
        pending = [item for item, marker in zip(items, seen) if marker is None]
        outcomes = await asyncio.gather(*(self._publish(item) for item in pending), return_exceptions=True)
        done = [item for item, outcome in zip(pending, outcomes) if not isinstance(outcome, BaseException)]
        if done:
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in done:
                    pipe.set(_marker(item.topic, item.item_id), "1", ex=MARKER_TTL_S)
                await pipe.execute()
        failures = [(item, outcome) for item, outcome in zip(pending, outcomes) if isinstance(outcome, BaseException)]
        if failures:
            # A failed publish pauses its ordering key in the client: resume it so the retry can publish.
            for item, _ in failures:
                self._publisher.resume_publish(self._names.topic(item.topic), item.ordering_key)
            raise failures[0][1]
        return len(done)

    async def _publish(self, item: _Item) -> str:
        future = self._publisher.publish(self._names.topic(item.topic), item.body,
                                         ordering_key=item.ordering_key, **item.attributes)
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        await asyncio.to_thread(self._publisher.stop)


class PubSubSignalSource:
    transient_errors = (GoogleAPICallError, RetryError, RedisError)

    def __init__(self, settings: Settings, redis: aioredis.Redis, consumer: str,
                 subscriber: pubsub_v1.SubscriberClient | None = None,
                 publisher: pubsub_v1.PublisherClient | None = None) -> None:
        self._settings = settings
        self._names = PubSubNames.from_settings(settings)
        self.name = self._names.subscription
        self.consumer = consumer
        self._redis = redis
        self._dead_mirror = StreamPublisher(redis)
        self._subscriber = subscriber or pubsub_v1.SubscriberClient()
        self._publisher = publisher or pubsub_v1.PublisherClient()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._pull = None  # the streaming pull future
        self.redelivered = 0

    async def _subscribe(self) -> None:
        await asyncio.to_thread(ensure_signal_topology, self._settings, self._publisher, self._subscriber)
        loop = asyncio.get_running_loop()
        queue = self._queue

        def on_message(message) -> None:  # on the client's threads: hand over to the event loop
            try:
                loop.call_soon_threadsafe(queue.put_nowait, message)
            except RuntimeError:  # the loop is closed: let another consumer have it now
                message.nack()

        m = self._settings.messaging
        # Leases are extended claim_idle_ms at a time (the client's default is 60 s per stream): a
        # consumer that dies leaves its messages to the others after at most claim_idle_ms.
        flow = pubsub_v1.types.FlowControl(max_messages=m.flow_control_max_messages,
                                           max_bytes=m.flow_control_max_bytes,
                                           max_duration_per_lease_extension=m.claim_idle_ms // 1000)
        self._pull = self._subscriber.subscribe(self._names.subscription_path(), callback=on_message,
                                                flow_control=flow)
        log.info("consumer %s pulling %s", self.consumer, self._names.subscription_path())

    async def receive(self, stop: asyncio.Event) -> list[Delivery]:
        if self._pull is not None and self._pull.done():  # the stream ended (subscription deleted...)
            pull, self._pull = self._pull, None
            raise pull.exception() or RuntimeError("streaming pull ended")
        if self._pull is None:
            await self._subscribe()
        try:
            first = await asyncio.wait_for(self._queue.get(), RECEIVE_WAIT_S)
        except asyncio.TimeoutError:
            return []
        batch = [first]
        while len(batch) < self._settings.messaging.batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        deliveries = []
        for message in batch:
            if (message.delivery_attempt or 0) > 1:  # only known where a dead-letter policy is set
                self.redelivered += 1
            deliveries.append(Delivery(message.message_id, bytes(message.data), message.publish_time,
                                       handle=message))
        return deliveries

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            delivery.handle.ack()

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:  # a nack after an ack changes nothing
            delivery.handle.nack()

    async def dead_letter(self, delivery: Delivery, payload: bytes, reason: str) -> None:
        limit = self._settings.messaging.max_payload_bytes
        marker = _marker(self._names.dead, f"{self.name}:{delivery.message_id}")
        if not await self._redis.exists(marker):  # a redelivered bad message is dead-lettered once
            future = self._publisher.publish(
                self._names.topic(self._names.dead), payload[:limit], reason=_attribute(reason),
                source=self.name, message_id=delivery.message_id, at=datetime.now(timezone.utc).isoformat(),
                payload_bytes=str(len(payload)), payload_clipped="true" if len(payload) > limit else "false")
            await asyncio.wrap_future(future)
            await self._redis.set(marker, "1", ex=MARKER_TTL_S)
        await append_dead_letter(self._dead_mirror, self.name, delivery.message_id, payload, reason, limit)

    async def close(self) -> None:
        if self._pull is not None:
            self._pull.cancel()
            try:
                await asyncio.to_thread(self._pull.result, 10)
            except BaseException:  # cancelled or already failed: either way it has stopped
                pass
        while not self._queue.empty():  # handed over but never processed: redeliver now
            self._queue.get_nowait().nack()
        await asyncio.to_thread(self._subscriber.close)
        await asyncio.to_thread(self._publisher.stop)


_SIGNAL_TOPOLOGY_READY: set[PubSubNames] = set()


async def publish_signals(settings: Settings, payloads: Sequence[str]) -> str:
    """Publish signals to the signals topic (creating it and the subscription first, so nothing
    published before the first consumer starts is lost)."""
    names = PubSubNames.from_settings(settings)
    publisher = pubsub_v1.PublisherClient()
    try:
        if names not in _SIGNAL_TOPOLOGY_READY:  # once per process (`tom demo` publishes one by one)
            await asyncio.to_thread(ensure_signal_topology, settings, publisher)
            _SIGNAL_TOPOLOGY_READY.add(names)
        futures = [publisher.publish(names.topic(names.signals), payload.encode()) for payload in payloads]
        await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    finally:
        await asyncio.to_thread(publisher.stop)
    return names.topic(names.signals)
