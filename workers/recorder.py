"""The recorder: the one process that writes the database.

It reads `order_events`, `executions` and `signals.dead` through the consumer group `recorder`,
writes each batch in one transaction of idempotent upserts, then acknowledges it. At-least-once
delivery plus idempotent writes gives exactly-once rows. It runs inside `tom api`, which also serves
reads from the same connection (a DuckDB file has one read-write process).
"""
from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from oms.events import (
    DEAD_LETTER_STREAM,
    EVENT_FIELD,
    EXECUTION_FIELD,
    EXECUTIONS_STREAM,
    ORDER_EVENTS_STREAM,
    RECORDER_GROUP,
    OrderEvent,
)
from oms.models import Fill
from workers.consumer import ensure_group
from workers.storage import DuckDBStore, decode_dead_letter

log = logging.getLogger("tom.recorder")
STREAMS = (ORDER_EVENTS_STREAM, EXECUTIONS_STREAM, DEAD_LETTER_STREAM)
BATCH = 500


class Recorder:
    def __init__(self, redis: aioredis.Redis, store: DuckDBStore, name: str = "recorder-1") -> None:
        self._redis = redis
        self._store = store
        self._name = name
        self.recorded = 0

    async def run(self, stop: asyncio.Event) -> None:
        for stream in STREAMS:
            await ensure_group(self._redis, stream, RECORDER_GROUP)
        # Entries delivered to us before a crash and never acknowledged come first ("0"), then new ones.
        while await self.drain(pending=True):
            pass
        while not stop.is_set():
            try:
                await self.drain(block_ms=500)
            except (RedisError, OSError) as exc:
                log.warning("recorder: %s; retrying", exc)
                await asyncio.sleep(1)

    async def drain(self, block_ms: int | None = None, pending: bool = False) -> int:
        """Record one round of entries from every stream; returns how many were recorded."""
        position = "0" if pending else ">"
        response = await self._redis.xreadgroup(RECORDER_GROUP, self._name, {s: position for s in STREAMS},
                                                count=BATCH, block=block_ms)
        if not response:
            return 0
        events, fills, dead, acks = [], [], [], {}
        for stream, entries in response:
            for entry_id, fields in entries:
                acks.setdefault(stream, []).append(entry_id)
                try:
                    if stream == ORDER_EVENTS_STREAM:
                        events.append(OrderEvent.model_validate_json(fields[EVENT_FIELD]))
                    elif stream == EXECUTIONS_STREAM:
                        fills.append(Fill.model_validate_json(fields[EXECUTION_FIELD]))
                    else:
                        dead.append(decode_dead_letter(fields))
                except (KeyError, ValueError) as exc:  # malformed entry: keep it visible, do not block the rest
                    log.error("recorder: skipping malformed %s entry %s: %s", stream, entry_id, exc)
        await asyncio.to_thread(self._store.record, events, fills, dead)
        for stream, ids in acks.items():
            await self._redis.xack(stream, RECORDER_GROUP, *ids)
        count = len(events) + len(fills) + len(dead)
        self.recorded += count
        return count

    async def catch_up(self) -> int:
        """Record everything published so far (tests, `tom report`)."""
        total = 0
        while (n := await self.drain()) > 0:
            total += n
        return total
