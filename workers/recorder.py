"""The recorder: the one process that writes the database.

It reads `order_events`, `executions` and `signals.dead` through the consumer group `recorder`,
writes each batch in one transaction of idempotent upserts, then acknowledges it. At-least-once
delivery plus idempotent writes gives exactly-once rows. It runs inside `tom api`, which also serves
reads from the same connection (a DuckDB file has one read-write process).

It survives any error and loses no event:
- an entry that cannot be decoded, or whose row the database refuses (a value a DECIMAL column
  cannot hold...), is set aside on the `recorder.dead` stream with its stream, id, fields and
  reason, then acknowledged: the rest of its batch is written;
- any other failure (database unwritable, Redis down, a bug) acknowledges nothing: the batch stays
  pending and is retried with capped backoff.
`health()` says how it is doing; GET /readyz shows it (see workers/api.py).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import datetime, timezone

import redis.asyncio as aioredis

from oms.events import (
    DEAD_LETTER_STREAM,
    EVENT_FIELD,
    EXECUTION_FIELD,
    EXECUTIONS_STREAM,
    ORDER_EVENTS_STREAM,
    RECORDER_GROUP,
    OrderEvent,
)
from activities.streams import StreamPublisher
from oms.models import Fill
from workers.consumer import ensure_group, undecoded
from storage import OrderStore, decode_dead_letter

log = logging.getLogger("tom.recorder")
STREAMS = (ORDER_EVENTS_STREAM, EXECUTIONS_STREAM, DEAD_LETTER_STREAM)
RECORDER_DEAD_STREAM = "recorder.dead"  # entries the recorder could not write, with the reason
BATCH = 500
BACKOFF_MAX_S = 10.0
KEPT_FIELD_CHARS = 1_000_000  # a set-aside entry keeps its fields up to this size (streams cap payloads anyway)


class Recorder:
    def __init__(self, redis: aioredis.Redis, store: OrderStore, name: str = "recorder-1") -> None:
        self._redis = redis
        self._raw = undecoded(redis)  # entries are decoded one by one: one that is not UTF-8 is set aside
        self._store = store
        self._name = name
        self._aside = StreamPublisher(redis)
        self.recorded = 0
        self.set_aside = 0  # entries put on recorder.dead
        self.consecutive_failures = 0  # rounds in a row that wrote nothing because of an error
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # time.time()
        self.last_success_at: float | None = None
        self._caught_up = False  # groups exist and entries pending from before a restart are written

    def health(self) -> dict:
        return {"recorded": self.recorded, "set_aside": self.set_aside,
                "consecutive_failures": self.consecutive_failures, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_success_at": self.last_success_at}

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self._raw.connection_pool.disconnect()  # a pool handed to a client is not closed with it

    async def _run(self, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                if not self._caught_up:
                    for stream in STREAMS:
                        await ensure_group(self._redis, stream, RECORDER_GROUP)
                    # Entries delivered to us before a crash and never acknowledged come first ("0").
                    while await self.drain(pending=True):
                        pass
                    self._caught_up = True
                await self.drain(block_ms=500)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # nothing acknowledged: the entries stay pending and come back
                self.record_failure(exc)
                log.warning("recorder: %s; retrying in %.1fs", self.last_error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, BACKOFF_MAX_S)
                self._caught_up = False  # what that round read is pending now: read it again first

    def record_failure(self, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.last_error_at = time.time()

    async def drain(self, block_ms: int | None = None, pending: bool = False) -> int:
        """Record one round of entries from every stream; returns how many were handled."""
        position = "0" if pending else ">"
        response = await self._raw.xreadgroup(RECORDER_GROUP, self._name, {s: position for s in STREAMS},
                                              count=BATCH, block=block_ms)
        if not response:
            return 0
        items: list[tuple[str, str, dict, object]] = []  # (stream, entry id, fields, decoded item)
        aside: list[tuple[str, str, dict, str]] = []  # (stream, entry id, fields, reason)
        for raw_stream, entries in response:
            stream = raw_stream.decode()
            for raw_id, raw_fields in entries:
                entry_id = raw_id.decode()
                if raw_fields is None:  # trimmed from the stream while pending: nothing left to write
                    items.append((stream, entry_id, {}, None))
                    continue
                try:
                    fields = {k.decode(): v.decode() for k, v in raw_fields.items()}
                except UnicodeDecodeError:
                    shown = {base64.b64encode(k).decode(): base64.b64encode(v).decode() for k, v in raw_fields.items()}
                    aside.append((stream, entry_id, shown, "cannot be decoded: not UTF-8 (fields kept base64-encoded)"))
                    continue
                try:
                    items.append((stream, entry_id, fields, _decode(stream, fields)))
                except (KeyError, ValueError) as exc:
                    aside.append((stream, entry_id, fields, f"cannot be decoded: {type(exc).__name__}: {exc}"))
        try:
            await asyncio.to_thread(self._write, [item for *_, item in items if item is not None])
        except self._store.row_errors:
            # Some row the database refuses: write one by one, set aside the ones refused.
            for stream, entry_id, fields, item in items:
                if item is None:
                    continue
                try:
                    await asyncio.to_thread(self._write, [item])
                except self._store.row_errors as exc:
                    aside.append((stream, entry_id, fields, f"database refused it: {type(exc).__name__}: {exc}"))
        for stream, entry_id, fields, reason in aside:
            await self._set_aside(stream, entry_id, fields, reason)
        acks: dict[str, list[str]] = {}
        for stream, entry_id, *_ in items:
            acks.setdefault(stream, []).append(entry_id)
        for stream, entry_id, *_ in aside:
            acks.setdefault(stream, []).append(entry_id)
        for stream, ids in acks.items():
            await self._redis.xack(stream, RECORDER_GROUP, *ids)
        count = len(items) + len(aside)
        self.recorded += count - len(aside)
        self.consecutive_failures = 0
        self.last_success_at = time.time()
        return count

    def _write(self, items: list) -> None:
        events = [i for i in items if isinstance(i, OrderEvent)]
        fills = [i for i in items if isinstance(i, Fill)]
        dead = [i for i in items if not isinstance(i, (OrderEvent, Fill))]
        self._store.record(events, fills, dead)

    async def _set_aside(self, stream: str, entry_id: str, fields: dict, reason: str) -> None:
        """Keep an entry the database cannot take, with why, where an operator can see and replay it."""
        self.set_aside += 1
        self.last_error = f"{stream} {entry_id}: {reason}"[:500]
        self.last_error_at = time.time()
        log.error("recorder: set aside %s entry %s: %s", stream, entry_id, reason[:300])
        await self._aside.publish_once(RECORDER_DEAD_STREAM, f"{stream}:{entry_id}", {
            "stream": stream, "message_id": entry_id, "reason": reason[:2000],
            "fields": json.dumps(fields)[:KEPT_FIELD_CHARS], "at": datetime.now(timezone.utc).isoformat(),
        })

    async def catch_up(self) -> int:
        """Record everything published so far (tests, `tom report`)."""
        total = 0
        while (n := await self.drain()) > 0:
            total += n
        return total


def _decode(stream: str, fields: dict):
    if stream == ORDER_EVENTS_STREAM:
        return OrderEvent.model_validate_json(fields[EVENT_FIELD])
    if stream == EXECUTIONS_STREAM:
        return Fill.model_validate_json(fields[EXECUTION_FIELD])
    return decode_dead_letter(fields)
