"""Redis streams: the local transport (and the recorder's feed in every deployment).

Signals are read in batches through the consumer group `order-management`, so several consumers
share the stream and each entry goes to one of them. An entry left pending by a dead consumer is
taken over (XAUTOCLAIM) once idle longer than `messaging.claim_idle_ms`. Entries are read as raw
bytes: one that is not UTF-8 must become a dead letter, not a crash.

Events and fills are appended exactly once per item id (activities/streams.py: marker and XADD
in one Lua script, atomically).
"""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from datetime import datetime, timezone

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from activities.streams import StreamPublisher
from config.settings import Settings
from messaging import Delivery
from oms.events import (
    DEAD_LETTER_STREAM,
    DEAD_PAYLOAD_FIELD,
    DEAD_REASON_FIELD,
    EVENT_FIELD,
    EXECUTION_FIELD,
    EXECUTIONS_STREAM,
    ORDER_EVENTS_STREAM,
    SIGNAL_FIELD,
    OrderEvent,
)
from oms.models import Fill

READ_BLOCK_MS = 1000


def undecoded(redis: aioredis.Redis) -> aioredis.Redis:
    """A client to the same server that returns bytes: for reading entries anyone may have written."""
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool(
        **{**redis.connection_pool.connection_kwargs, "decode_responses": False}))


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    try:
        # From the start of the stream: signals published before the first consumer are not lost.
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def entry_time(entry_id: str) -> datetime | None:
    """When Redis appended a stream entry: its id is <milliseconds>-<sequence>."""
    try:
        return datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def dead_payload_fields(payload: bytes | str, limit: int) -> dict[str, str]:
    """The payload as a dead letter keeps it: at most `limit` bytes, UTF-8 text or else base64."""
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    clipped = raw[:limit]
    try:
        text, encoding = clipped.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if len(raw) > limit and exc.start >= len(clipped) - 3 and exc.reason == "unexpected end of data":
            text, encoding = clipped[:exc.start].decode("utf-8"), "utf-8"  # clipped inside a character
        else:
            text, encoding = base64.b64encode(clipped).decode("ascii"), "base64"
    return {DEAD_PAYLOAD_FIELD: text, "payload_encoding": encoding, "payload_bytes": str(len(raw)),
            "payload_clipped": "true" if len(raw) > limit else "false"}


async def append_dead_letter(publisher: StreamPublisher, source: str, message_id: str, payload: bytes,
                             reason: str, limit: int) -> None:
    """One entry on `signals.dead` per (source, message id): the recorder writes it to the database."""
    await publisher.publish_once(DEAD_LETTER_STREAM, f"{source}:{message_id}", {
        **dead_payload_fields(payload, limit), DEAD_REASON_FIELD: reason, "source": source,
        "message_id": message_id, "at": datetime.now(timezone.utc).isoformat(),
    })


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _describe_entry(fields: dict[bytes, bytes]) -> bytes:
    """An entry without a `signal` field, as JSON of its fields (undecodable bytes escaped)."""
    return json.dumps({k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
                       for k, v in fields.items()}).encode()


class RedisSignalSource:
    transient_errors = (RedisError,)

    def __init__(self, settings: Settings, redis: aioredis.Redis, consumer: str) -> None:
        m = settings.messaging
        self._redis, self._raw = redis, undecoded(redis)
        self._settings = settings
        self.name, self._group, self._consumer = m.signals_stream, m.consumer_group, consumer
        self._dead = StreamPublisher(redis)
        self._grouped = False
        self._claim_cursor = "0-0"
        self._reclaiming = True  # a round of XAUTOCLAIM first: entries a dead consumer left behind
        self._next_claim = 0.0
        self.redelivered = 0

    async def receive(self, stop: asyncio.Event) -> list[Delivery]:
        try:
            if not self._grouped:  # here, inside the caller's retry: Redis may not be up yet
                await ensure_group(self._redis, self.name, self._group)
                self._grouped = True
            loop = asyncio.get_running_loop()
            if not self._reclaiming and loop.time() >= self._next_claim:
                self._reclaiming = True
            while self._reclaiming and not stop.is_set():
                claimed = await self._reclaim_step()
                if claimed:
                    return claimed
            return await self._read()
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the group was deleted: create it again on the next round
                self._grouped = False
            raise

    async def _read(self) -> list[Delivery]:
        response = await self._raw.xreadgroup(
            self._group, self._consumer, {self.name: ">"}, count=self._settings.messaging.batch_size,
            block=READ_BLOCK_MS)
        return [self._delivery(_text(entry_id), fields) for _, batch in response for entry_id, fields in batch] \
            if response else []

    async def _reclaim_step(self) -> list[Delivery]:
        """One XAUTOCLAIM page of entries idle longer than claim_idle_ms; ends the round at cursor 0-0."""
        m = self._settings.messaging
        cursor, claimed, *_ = await self._raw.xautoclaim(
            self.name, self._group, self._consumer, min_idle_time=m.claim_idle_ms,
            start_id=self._claim_cursor, count=m.batch_size)
        cursor = self._claim_cursor = _text(cursor)
        if cursor == "0-0":
            self._reclaiming = False
            self._next_claim = asyncio.get_running_loop().time() + m.claim_idle_ms / 2000
        deliveries = [self._delivery(_text(entry_id), fields) for entry_id, fields in claimed if fields is not None]
        self.redelivered += len(deliveries)
        return deliveries

    def _delivery(self, entry_id: str, fields: dict[bytes, bytes]) -> Delivery:
        payload = fields.get(SIGNAL_FIELD.encode())
        if payload is None:
            return Delivery(entry_id, None, entry_time(entry_id), described=_describe_entry(fields),
                            missing_reason=f"stream entry has no {SIGNAL_FIELD!r} field")
        return Delivery(entry_id, payload, entry_time(entry_id))

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await self._redis.xack(self.name, self._group, *(d.message_id for d in deliveries))

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        pass  # they stay pending: XAUTOCLAIM hands them out again after claim_idle_ms

    async def dead_letter(self, delivery: Delivery, payload: bytes, reason: str) -> None:
        await append_dead_letter(self._dead, self.name, delivery.message_id, payload, reason,
                                 self._settings.messaging.max_payload_bytes)

    async def close(self) -> None:
        await self._raw.connection_pool.disconnect()  # a pool handed to a client is not closed with it


class RedisEventSink:
    """`order_events` and `executions`, each item appended exactly once (marker + XADD, atomic)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._streams = StreamPublisher(redis)

    async def publish(self, events: Sequence[OrderEvent], fills: Sequence[Fill]) -> int:
        if not events and not fills:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in events:
                await self._streams.publish_once(ORDER_EVENTS_STREAM, event.event_id,
                                                 {EVENT_FIELD: event.model_dump_json()}, client=pipe)
            for fill in fills:
                await self._streams.publish_once(EXECUTIONS_STREAM, fill.fill_id,
                                                 {EXECUTION_FIELD: fill.model_dump_json()}, client=pipe)
            results = await pipe.execute()
        return sum(1 for r in results if r == 1)

    async def close(self) -> None:
        pass


async def publish_signals(settings: Settings, redis: aioredis.Redis, payloads: Sequence[str]) -> str:
    stream = settings.messaging.signals_stream
    async with redis.pipeline(transaction=False) as pipe:
        for payload in payloads:
            pipe.xadd(stream, {SIGNAL_FIELD: payload})
        await pipe.execute()
    return stream
