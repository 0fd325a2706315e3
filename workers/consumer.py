"""`tom consume`: signals to OrderWorkflows, from the configured transport (messaging/).

With `messaging.type: redis` the signals are the stream `signals`, read through the consumer group
`order-management`; with `pubsub` the subscription `<topic_prefix>signals-order-management`
(messaging/__init__.py says how each transport moves messages). Either way a message is
acknowledged only once its workflow is durably started (or already existed) or once it is
dead-lettered, so a consumer killed between the two leaves it to be delivered again, and the start
then finds `order-<signal_id>` already there: one order. When Temporal is slow or down the
consumer stops reading and retries the batch with capped exponential backoff: nothing is dropped,
nothing spins.

No message can stop a consumer: whatever cannot become an order (not UTF-8, no signal, malformed
or non-canonical JSON, out of bounds, too old, an exchange this deployment does not trade on, a
start Temporal refuses for good) is dead-lettered with its reason and acknowledged. The dead letter
keeps the payload as received, clipped to `messaging.max_payload_bytes` (on Redis as UTF-8 text
or, when it is not UTF-8, base64 in `payload_encoding`; on Pub/Sub as the message body).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
import socket
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from temporalio.client import Client

from config.settings import Settings
from messaging import Delivery, SignalSource, signal_source
# Re-exported: the recorder and the tests use them from here.
from messaging.redis_streams import dead_payload_fields, ensure_group, undecoded  # noqa: F401
from workers.intake import InvalidSignal, UnstartableSignal, parse_signal, start_order
from workers.runtime import configure_logging, connect_temporal, redis_client

log = logging.getLogger("tom.consumer")
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0


@dataclass
class ConsumerStats:
    started: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    start_failures: int = 0
    backoff_s: float = 0.0
    last_error: str | None = field(default=None)


class SignalConsumer:
    def __init__(self, client: Client, redis: aioredis.Redis, settings: Settings, name: str | None = None,
                 source: SignalSource | None = None) -> None:
        self._client = client
        self._settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._source = source or signal_source(settings, redis, self.name)
        self.stats = ConsumerStats()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self._source.close()

    async def _run(self, stop: asyncio.Event) -> None:
        log.info("consumer %s reading %r (%s)", self.name, self._source.name, self._settings.messaging.type)
        while not stop.is_set():
            try:
                before = self._source.redelivered
                deliveries = await self._source.receive(stop)
                if self._source.redelivered > before:
                    self.stats.reclaimed += self._source.redelivered - before
                    log.info("reclaimed %d pending signals", self._source.redelivered - before)
                if deliveries:
                    try:
                        left = await self._process_until_done(deliveries, stop)
                    except BaseException:
                        await self._source.release(deliveries)  # the batch failed: let it come back
                        raise
                    await self._source.release(left)  # stopping while Temporal was down
            except self._source.transient_errors as exc:  # transport restarting: pending messages stay pending
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("%s unavailable (%s); retrying in 1s", self._settings.messaging.type, exc)
                await _pause(stop, 1.0)
            except Exception as exc:  # a bug must not stop intake: say so, wait, carry on
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.exception("consumer error; retrying in 1s")
                await _pause(stop, 1.0)

    async def _process_until_done(self, deliveries: list[Delivery], stop: asyncio.Event) -> list[Delivery]:
        """Process a batch; messages whose workflow could not be started are retried with backoff.
        Returns those still not done when `stop` came."""
        backoff = BACKOFF_START_S
        while deliveries and not stop.is_set():
            deliveries = await self._process(deliveries)
            if deliveries:
                self.stats.backoff_s = backoff
                log.warning("Temporal unavailable (%s); %d signals wait, retrying in %.1fs",
                            self.stats.last_error, len(deliveries), backoff)
                await _pause(stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.stats.backoff_s = 0.0
        return deliveries

    async def _process(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Start or dead-letter each message; ack what is done; return what must be retried."""
        done: list[Delivery] = []
        retry: list[Delivery] = []
        starts = []
        for delivery in deliveries:
            payload = delivery.payload
            if payload is None:
                await self._dead_letter(delivery, delivery.described, delivery.missing_reason)
                done.append(delivery)
                continue
            try:
                signal = parse_signal(payload, self._settings, received_at=delivery.received_at)
            except InvalidSignal as exc:
                await self._dead_letter(delivery, payload, str(exc))
                done.append(delivery)
                continue
            except Exception as exc:
                # Validation itself failed on this payload. Dead-letter it: left unacknowledged, it
                # would be delivered to each consumer in turn and kill every one of them (a poison pill).
                log.exception("validating %s failed", delivery.message_id)
                await self._dead_letter(delivery, payload, f"could not be validated: {type(exc).__name__}")
                done.append(delivery)
                continue
            starts.append((delivery, payload, start_order(self._client, self._settings, signal)))
        results = await asyncio.gather(*(s[2] for s in starts), return_exceptions=True)
        for (delivery, payload, _), result in zip(starts, results):
            if isinstance(result, UnstartableSignal):
                await self._dead_letter(delivery, payload, str(result))
                done.append(delivery)
            elif isinstance(result, BaseException):
                self.stats.start_failures += 1
                self.stats.last_error = f"{type(result).__name__}: {result}"[:500]
                retry.append(delivery)
            else:
                done.append(delivery)
                if result.created:
                    self.stats.started += 1
                else:
                    self.stats.duplicates += 1
        await self._source.ack(done)
        return retry

    async def _dead_letter(self, delivery: Delivery, payload: bytes, reason: str) -> None:
        self.stats.dead_lettered += 1
        log.warning("dead letter %s: %s", delivery.message_id, reason[:300])
        await self._source.dead_letter(delivery, payload, reason)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


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
