"""`tom consume`: the `signals` stream to OrderWorkflows.

Reads in batches through the consumer group `order-management`, so several consumers share the
stream and each entry goes to one of them. An entry is acknowledged only once its workflow is
durably started (or already existed) or once it is dead-lettered, so a consumer killed between the
two leaves it pending; XAUTOCLAIM hands entries idle longer than `messaging.claim_idle_ms` to a
live consumer. When Temporal is slow or down the consumer stops reading and retries the batch with
capped exponential backoff: nothing is dropped, nothing spins.

No entry can stop a consumer: entries are read as raw bytes, and whatever cannot become an order
(not UTF-8, no `signal` field, malformed or non-canonical JSON, out of bounds, too old, an exchange
this deployment does not trade on, a start Temporal refuses for good) is dead-lettered with its
reason and acknowledged. The dead letter keeps the payload as received, clipped to
`messaging.max_payload_bytes`, as UTF-8 text or, when it is not UTF-8, base64 (`payload_encoding`).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal as signals
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from temporalio.client import Client

from activities.streams import StreamPublisher
from config.settings import Settings
from oms.events import (
    DEAD_LETTER_STREAM,
    DEAD_PAYLOAD_FIELD,
    DEAD_REASON_FIELD,
    SIGNAL_FIELD,
)
from workers.intake import InvalidSignal, UnstartableSignal, entry_time, parse_signal, start_order
from workers.runtime import configure_logging, connect_temporal, redis_client

log = logging.getLogger("tom.consumer")
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0
READ_BLOCK_MS = 1000


@dataclass
class ConsumerStats:
    started: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    start_failures: int = 0
    backoff_s: float = 0.0
    last_error: str | None = field(default=None)


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


class SignalConsumer:
    def __init__(self, client: Client, redis: aioredis.Redis, settings: Settings, name: str | None = None) -> None:
        self._client = client
        self._redis = redis
        # Entries are read undecoded: one that is not UTF-8 must become a dead letter, not a crash.
        self._raw = undecoded(redis)
        self._settings = settings
        m = settings.messaging
        self._stream, self._group = m.signals_stream, m.consumer_group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._dead = StreamPublisher(redis)
        self.stats = ConsumerStats()
        self._claim_cursor = "0-0"

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self._raw.connection_pool.disconnect()  # a pool handed to a client is not closed with it

    async def _run(self, stop: asyncio.Event) -> None:
        log.info("consumer %s reading %r in group %r", self.name, self._stream, self._group)
        next_claim = 0.0
        grouped = False
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if not grouped:  # inside the retry: Redis may not be up yet, or the group was deleted
                    await ensure_group(self._redis, self._stream, self._group)
                    grouped = True
                if loop.time() >= next_claim:
                    await self._reclaim(stop)
                    next_claim = loop.time() + self._settings.messaging.claim_idle_ms / 2000
                entries = await self._read()
                if entries:
                    await self._process_until_done(entries, stop)
            except RedisError as exc:  # Redis restarting: wait and resume; pending entries stay pending
                self.stats.last_error = f"Redis: {exc}"
                log.warning("Redis unavailable (%s); retrying in 1s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                grouped = grouped and "NOGROUP" not in str(exc)
            except Exception as exc:  # a bug must not stop intake: say so, wait, carry on
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.exception("consumer error; retrying in 1s")
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass

    async def _read(self) -> list[tuple[str, dict]]:
        response = await self._raw.xreadgroup(
            self._group, self.name, {self._stream: ">"}, count=self._settings.messaging.batch_size,
            block=READ_BLOCK_MS)
        return [(_text(entry_id), fields) for _, batch in response for entry_id, fields in batch] if response else []

    async def _reclaim(self, stop: asyncio.Event) -> None:
        """Take over entries a dead consumer left pending for longer than claim_idle_ms."""
        while not stop.is_set():
            cursor, claimed, *_ = await self._raw.xautoclaim(
                self._stream, self._group, self.name, min_idle_time=self._settings.messaging.claim_idle_ms,
                start_id=self._claim_cursor, count=self._settings.messaging.batch_size)
            cursor = self._claim_cursor = _text(cursor)
            claimed = [(_text(entry_id), fields) for entry_id, fields in claimed if fields is not None]
            if claimed:
                self.stats.reclaimed += len(claimed)
                log.info("reclaimed %d pending signals", len(claimed))
                await self._process_until_done(claimed, stop)
            if cursor == "0-0":
                return

    async def _process_until_done(self, entries: list[tuple[str, dict]], stop: asyncio.Event) -> None:
        """Process a batch; entries whose workflow could not be started are retried with backoff."""
        backoff = BACKOFF_START_S
        while entries and not stop.is_set():
            entries = await self._process(entries)
            if entries:
                self.stats.backoff_s = backoff
                log.warning("Temporal unavailable (%s); %d signals wait, retrying in %.1fs",
                            self.stats.last_error, len(entries), backoff)
                try:
                    await asyncio.wait_for(stop.wait(), backoff)
                except asyncio.TimeoutError:
                    pass
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.stats.backoff_s = 0.0

    async def _process(self, entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """Start or dead-letter each entry; ack what is done; return what must be retried."""
        done: list[str] = []
        retry: list[tuple[str, dict]] = []
        starts = []
        for entry_id, fields in entries:
            payload = fields.get(SIGNAL_FIELD.encode())
            if payload is None:
                await self._dead_letter(entry_id, _describe_entry(fields), f"stream entry has no {SIGNAL_FIELD!r} field")
                done.append(entry_id)
                continue
            try:
                signal = parse_signal(payload, self._settings, received_at=entry_time(entry_id))
            except InvalidSignal as exc:
                await self._dead_letter(entry_id, payload, str(exc))
                done.append(entry_id)
                continue
            except Exception as exc:
                # Validation itself failed on this payload. Dead-letter it: left pending, it would be
                # reclaimed by each consumer in turn and kill every one of them (a poison pill).
                log.exception("validating %s failed", entry_id)
                await self._dead_letter(entry_id, payload, f"could not be validated: {type(exc).__name__}")
                done.append(entry_id)
                continue
            starts.append((entry_id, fields, payload, start_order(self._client, self._settings, signal)))
        results = await asyncio.gather(*(s[3] for s in starts), return_exceptions=True)
        for (entry_id, fields, payload, _), result in zip(starts, results):
            if isinstance(result, UnstartableSignal):
                await self._dead_letter(entry_id, payload, str(result))
                done.append(entry_id)
            elif isinstance(result, BaseException):
                self.stats.start_failures += 1
                self.stats.last_error = f"{type(result).__name__}: {result}"[:500]
                retry.append((entry_id, fields))
            else:
                done.append(entry_id)
                if result.created:
                    self.stats.started += 1
                else:
                    self.stats.duplicates += 1
        if done:
            await self._redis.xack(self._stream, self._group, *done)
        return retry

    async def _dead_letter(self, entry_id: str, payload: bytes, reason: str) -> None:
        self.stats.dead_lettered += 1
        log.warning("dead letter %s: %s", entry_id, reason[:300])
        await self._dead.publish_once(DEAD_LETTER_STREAM, f"{self._stream}:{entry_id}", {
            **dead_payload_fields(payload, self._settings.messaging.max_payload_bytes),
            DEAD_REASON_FIELD: reason, "source": self._stream,
            "message_id": entry_id, "at": datetime.now(timezone.utc).isoformat(),
        })


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _describe_entry(fields: dict[bytes, bytes]) -> bytes:
    """An entry without a `signal` field, as JSON of its fields (undecodable bytes escaped)."""
    return json.dumps({k.decode("utf-8", "backslashreplace"): v.decode("utf-8", "backslashreplace")
                       for k, v in fields.items()}).encode()


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


async def consumer_lag(redis: aioredis.Redis, settings: Settings) -> dict[str, int]:
    """Entries not yet delivered (lag) and delivered but unacknowledged (pending)."""
    try:
        groups = await redis.xinfo_groups(settings.messaging.signals_stream)
    except ResponseError:
        return {"lag": 0, "pending": 0}
    for group in groups:
        if group["name"] == settings.messaging.consumer_group:
            return {"lag": int(group.get("lag") or 0), "pending": int(group.get("pending") or 0)}
    return {"lag": 0, "pending": 0}


async def serve(settings: Settings, name: str | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await connect_temporal(settings)
    redis = redis_client(settings)
    try:
        await SignalConsumer(client, redis, settings, name).run(stop)
    finally:
        await redis.aclose()
    log.info("consumer stopped")


def run(settings: Settings, args) -> int:
    configure_logging(settings)
    asyncio.run(serve(settings, getattr(args, "name", None)))
    return 0
