"""What leaves the order workflow: events on Redis streams, the order cache, their names.

Stream entries carry one JSON document in a field named after the stream's item (DESIGN.md 3):
`signals` -> `signal`, `order_events` -> `event`, `executions` -> `execution`, and a dead letter has
`payload` (the original, as received) and `reason`.
"""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from oms.models import OrderSnapshot, OrderState

SIGNALS_STREAM = "signals"
DEAD_LETTER_STREAM = "signals.dead"
ORDER_EVENTS_STREAM = "order_events"
EXECUTIONS_STREAM = "executions"
CONSUMER_GROUP = "order-management"
RECORDER_GROUP = "recorder"

SIGNAL_FIELD = "signal"
EVENT_FIELD = "event"
EXECUTION_FIELD = "execution"
DEAD_PAYLOAD_FIELD = "payload"
DEAD_REASON_FIELD = "reason"

# Streams are capped (approximately) so Redis memory stays bounded; DuckDB keeps the history.
STREAM_MAXLEN = 1_000_000


def order_cache_key(order_id: str) -> str:
    return f"order:{order_id}"


def client_order_key(client_order_id: str) -> str:
    """client order id -> order id (workflow id), for the batched fill poller."""
    return f"cid:{client_order_id}"


def published_marker_key(stream: str, item_id: str) -> str:
    """Marks an item as published so a retried activity never appends it twice."""
    return f"published:{stream}:{item_id}"


class OrderEvent(BaseModel):
    """One transition of one order, with the snapshot after it."""

    event_id: str  # <order_id>:<transition index>: unique, stable across retries and replays
    order_id: str
    state: OrderState
    at: datetime
    reason: str | None = None
    snapshot: OrderSnapshot


class DeadLetter(BaseModel):
    payload: str  # the original message, as received (clipped to messaging.max_payload_bytes)
    reason: str
    payload_encoding: str = "utf-8"  # base64 when the original was not UTF-8 text
    source: str = SIGNALS_STREAM
    message_id: str | None = None
    at: datetime
