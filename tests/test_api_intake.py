"""What the API refuses, and the recorder that survives what it cannot write.

The HTTP checks run against a real `tom api` process beside a real `tom worker`; the recorder ones
run the API app in process (its lifespan starts the recorder) on a real Redis and DuckDB.
"""
import asyncio
import json
import socket
import time
from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import urlparse

import httpx

from oms.events import EVENT_FIELD, ORDER_EVENTS_STREAM, OrderEvent
from oms.models import OrderSnapshot, OrderState, Side, OrderType, TimeInForce, Transition
from tests.helpers import make_signal
from tests.test_api import api_url, wait_state  # noqa: F401  (fixture)
from workers.api import Services, create_app
from workers.recorder import RECORDER_DEAD_STREAM
from storage.duckdb import DuckDBStore


def raw_request(url: str, head: str, body: bytes) -> tuple[int, str, float]:
    """Send a request by hand (declared length, part of the body), return (status, body, seconds)."""
    parsed = urlparse(url)
    started = time.monotonic()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1].decode(errors="replace"), time.monotonic() - started


def test_a_100_mb_body_is_refused_with_413_without_being_read(api_url):
    head = ("POST /signals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n")
    status, body, seconds = raw_request(api_url, head, b'{"signal_id": "' + b"x" * 65536)
    assert status == 413 and "service.max_request_bytes" in body and seconds < 5
    # Chunked, no declared length: cut off once the bytes received pass the limit.
    chunked = "POST /signals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"x" * (1024 * 1024)
    chunks = b"".join(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in range(5))
    status, body, _ = raw_request(api_url, chunked, chunks)
    assert status == 413, body


def test_unknown_fields_huge_values_and_long_reasons_are_refused_with_422(api_url):
    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1")
    assert httpx.post(f"{api_url}/signals", json=signal.model_dump(mode="json", exclude_none=True)).status_code == 202
    wait_state(api_url, signal.workflow_id, {"accepted"})
    order = f"{api_url}/orders/{signal.workflow_id}"
    side = httpx.patch(order, json={"quantity": "0.2", "side": "sell"})
    assert side.status_code == 422 and "side" in side.json()["detail"], side.text
    for quantity in ("1e30", "1_0", "+1", "NaN"):
        huge = httpx.patch(order, json={"quantity": quantity})
        assert huge.status_code == 422 and "quantity" in huge.json()["detail"], (quantity, huge.text)
    started = time.monotonic()
    long_reason = httpx.post(f"{order}/cancel", json={"reason": "r" * 3_000_000}, timeout=30)
    assert long_reason.status_code == 422 and "reason" in long_reason.json()["detail"]
    assert time.monotonic() - started < 5
    assert httpx.get(order).json()["state"] == "accepted"  # nothing reached the workflow
    extra = httpx.post(f"{order}/cancel", json={"reason": "ok", "force": True})
    assert extra.status_code == 422 and "force" in extra.json()["detail"]
    assert httpx.post(f"{order}/cancel", json={"reason": "done"}).json()["state"] == "cancelled"

    base = make_signal().model_dump(mode="json", exclude_none=True)
    for change, fragment in (({"exchange": "binance"}, "cannot be served in execution mode simulation"),
                             ({"execution": {"start_at": "9999-01-01T00:00:00Z"}}, "orders.max_start_delay_s"),
                             ({"quantity": "1_0"}, "quantity")):
        refused = httpx.post(f"{api_url}/signals", json={**base, **change})
        assert refused.status_code == 422 and fragment in refused.json()["detail"], refused.text
    duplicate = httpx.post(f"{api_url}/signals", content=json.dumps(base)[:-1] + ', "side": "sell"}',
                           headers={"content-type": "application/json"})
    assert duplicate.status_code == 422 and "duplicate key" in duplicate.json()["detail"]
    # Amend and cancel bodies are as strict: a duplicate key does not silently win.
    json_header = {"content-type": "application/json"}
    twice = httpx.patch(order, content='{"quantity": "0.2", "quantity": "10"}', headers=json_header)
    assert twice.status_code == 422 and "duplicate key 'quantity'" in twice.json()["detail"], twice.text
    nan = httpx.patch(order, content='{"quantity": NaN}', headers=json_header)
    assert nan.status_code == 422 and "NaN" in nan.json()["detail"], nan.text
    empty = httpx.patch(order, content="", headers=json_header)
    assert empty.status_code == 422


def event(order_id: str, quantity: str, index: int = 0) -> OrderEvent:
    now = datetime.now(timezone.utc)
    snap = OrderSnapshot(order_id=order_id, signal_id=order_id[6:], strategy_id="s", client_order_id=order_id,
                         symbol="BTC/USDT", side=Side.BUY, order_type=OrderType.MARKET, time_in_force=TimeInForce.GTC,
                         quantity=Decimal(quantity), exchange="simulation", created_at=now, updated_at=now,
                         transitions=[Transition(state=OrderState.CREATED, at=now)])
    return OrderEvent(event_id=f"{order_id}:{index}", order_id=order_id, state=OrderState.CREATED, at=now, snapshot=snap)


async def publish_event(redis, e: OrderEvent) -> str:
    return await redis.xadd(ORDER_EVENTS_STREAM, {EVENT_FIELD: e.model_dump_json()})


async def test_the_recorder_survives_a_decimal_overflow_reports_it_and_loses_no_event(settings, redis, tmp_path):
    store = DuckDBStore(tmp_path / "rec.duckdb")
    services = Services(settings, None, redis, store)
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            good, bad = event("order-good", "0.5"), event("order-bad", "1e30")
            bad_id = await publish_event(redis, bad)
            await publish_event(redis, good)
            malformed = await redis.xadd(ORDER_EVENTS_STREAM, {EVENT_FIELD: "{not json"})

            async def recorded(order_id):
                for _ in range(100):
                    if store.get_order(order_id):
                        return True
                    await asyncio.sleep(0.05)
                return False
            assert await recorded("order-good")
            for _ in range(100):  # set aside just after the rest of the batch is written
                aside = {f["message_id"]: f for _, f in await redis.xrange(RECORDER_DEAD_STREAM)}
                if len(aside) == 2:
                    break
                await asyncio.sleep(0.05)
            assert set(aside) == {bad_id, malformed}
            assert "database refused it" in aside[bad_id]["reason"] and "DECIMAL" in aside[bad_id]["reason"]
            assert json.loads(json.loads(aside[bad_id]["fields"])[EVENT_FIELD])["snapshot"]["quantity"] == "1E+30"
            assert "cannot be decoded" in aside[malformed]["reason"]

            ready = (await api.get("/readyz")).json()
            assert ready["degraded"] is True and ready["recorder"]["running"] is True
            assert ready["recorder"]["set_aside"] == 2 and ready["recorder"]["last_error"]
            # It keeps going: a later event is written.
            await publish_event(redis, event("order-later", "1"))
            assert await recorded("order-later")
            assert not services.recorder_task.done()
            for _ in range(100):  # acknowledged just after the write
                if (await redis.xpending(ORDER_EVENTS_STREAM, "recorder"))["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await redis.xpending(ORDER_EVENTS_STREAM, "recorder"))["pending"] == 0

            # The database itself fails: nothing is acknowledged, /readyz says not ready, naming it.
            store._db.close()
            pending_id = await publish_event(redis, event("order-while-down", "1"))
            for _ in range(200):
                response = await api.get("/readyz")
                if response.status_code == 503 and not response.json()["checks"]["recorder"]["ok"]:
                    break
                await asyncio.sleep(0.1)
            body = response.json()
            assert response.status_code == 503 and body["recorder"]["consecutive_failures"] >= 3, body
            assert body["checks"]["recorder"]["detail"]
            pending = await redis.xpending(ORDER_EVENTS_STREAM, "recorder")
            assert pending["pending"] == 1 and pending["min"] == pending_id  # kept for when it recovers
            assert not services.recorder_task.done()
    finally:
        try:
            store.close()
        except Exception:
            pass


async def test_the_recorder_sets_aside_entries_that_are_not_utf8(settings, redis, redis_url, tmp_path):
    import base64

    import redis.asyncio as aioredis

    from oms.events import RECORDER_GROUP
    from workers.consumer import ensure_group
    from workers.recorder import STREAMS, Recorder

    store = DuckDBStore(tmp_path / "utf8.duckdb")
    raw = aioredis.from_url(redis_url)
    try:
        for stream in STREAMS:
            await ensure_group(redis, stream, RECORDER_GROUP)
        bad_id = (await raw.xadd(ORDER_EVENTS_STREAM, {EVENT_FIELD: b"\xff\xfe\x00\x80garbage"})).decode()
        await publish_event(redis, event("order-after", "2"))
        recorder = Recorder(redis, store)
        assert await recorder.catch_up() == 2
        assert store.get_order("order-after") is not None
        aside = {f["message_id"]: f for _, f in await redis.xrange(RECORDER_DEAD_STREAM)}
        assert "not UTF-8" in aside[bad_id]["reason"]
        kept = json.loads(aside[bad_id]["fields"])
        assert base64.b64decode(kept[base64.b64encode(EVENT_FIELD.encode()).decode()]) == b"\xff\xfe\x00\x80garbage"
        assert recorder.health()["set_aside"] == 1
    finally:
        await raw.aclose()
        store.close()
