"""No single stream entry can stop a consumer: whatever cannot become an order is dead-lettered with
its raw bytes (clipped, base64 when not UTF-8) and a reason, and acknowledged. All real: Redis, a
Temporal dev server, `tom consume` processes, DuckDB through the recorder."""
import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from oms.events import DEAD_LETTER_STREAM, RECORDER_GROUP, SIGNALS_STREAM
from oms.models import OrderSnapshot, OrderState
from tests.conftest import stop_process, tom_process
from tests.helpers import make_signal
from tests.test_consumer import GROUP, RunningConsumer, eventually, lag_is_zero
from tests.test_dev_stack import dev_config  # noqa: F401  (fixture)
from workers.consumer import SignalConsumer, ensure_group
from workers.recorder import STREAMS, Recorder
from storage.duckdb import DuckDBStore

GARBAGE = b"\xff\xfe\x00\x80garbage"


async def dead_letters(redis) -> dict[str, dict]:
    return {fields["message_id"]: fields for _, fields in await redis.xrange(DEAD_LETTER_STREAM)}


async def test_undecodable_missing_and_malformed_entries_are_dead_lettered_and_the_consumer_lives(
        temporal_env, order_worker, fast_settings, redis, redis_url):
    raw = aioredis.from_url(redis_url)  # writes bytes as they are
    good = make_signal(quantity="0.02")
    try:
        ids = [await raw.xadd(SIGNALS_STREAM, {"signal": GARBAGE}),
               await raw.xadd(SIGNALS_STREAM, {"sig\xffnal".encode("latin-1"): b"x", b"other": b"1"}),
               await raw.xadd(SIGNALS_STREAM, {"signal": b'{"signal_id": "a", "signal_id": "b"}'}),
               await raw.xadd(SIGNALS_STREAM, {"signal": good.model_dump_json().encode()})]
    finally:
        await raw.aclose()
    ids = [i.decode() for i in ids]
    consumer = RunningConsumer(SignalConsumer(temporal_env.client, redis, fast_settings, name="poison"))
    try:
        await consumer.wait_handled(4)
        await eventually(lambda: lag_is_zero(redis, fast_settings), 10, "every entry acknowledged")
        assert not consumer.task.done()
    finally:
        await consumer.close()
    dead = await dead_letters(redis)
    assert set(dead) == set(ids[:3])
    undecodable = dead[ids[0]]
    assert undecodable["payload_encoding"] == "base64" and base64.b64decode(undecodable["payload"]) == GARBAGE
    assert "not UTF-8" in undecodable["reason"]
    assert "no 'signal' field" in dead[ids[1]]["reason"] and "other" in dead[ids[1]]["payload"]
    assert "duplicate key 'signal_id'" in dead[ids[2]]["reason"]
    snap = await temporal_env.client.get_workflow_handle(good.workflow_id, result_type=OrderSnapshot).result()
    assert snap.state == OrderState.FILLED

    store = DuckDBStore(":memory:")  # the recorder writes the undecodable one as it was kept
    try:
        for stream in STREAMS:
            await ensure_group(redis, stream, RECORDER_GROUP)
        await Recorder(redis, store).catch_up()
        rows = {r["message_id"]: r for r in store.dead_letters()}
        assert rows[ids[0]]["payload_encoding"] == "base64"
        assert base64.b64decode(rows[ids[0]]["payload"]) == GARBAGE
    finally:
        store.close()


async def test_a_reclaimed_poison_entry_does_not_kill_a_second_consumer_process(
        temporal_env, fast_settings, stack_settings, redis, redis_url, tmp_path):
    """The entry that used to kill every consumer in turn: a first consumer took it and died (it stays
    pending under its name); a `tom consume` process reclaims it, dead-letters it, and keeps running."""
    await ensure_group(redis, SIGNALS_STREAM, GROUP)
    raw = aioredis.from_url(redis_url)
    try:
        entry_id = (await raw.xadd(SIGNALS_STREAM, {"signal": GARBAGE})).decode()
        await raw.xreadgroup(GROUP, "died", {SIGNALS_STREAM: ">"}, count=10)  # delivered, never acked
    finally:
        await raw.aclose()
    messaging = stack_settings.messaging.model_dump(mode="json")
    config = tmp_path / "quick.yaml"
    config.write_text(stack_settings.with_overrides(messaging={**messaging, "claim_idle_ms": 200}).to_yaml())
    proc = tom_process(config, "consume", "--name", "second", log_path=tmp_path / "second.log")
    try:
        await eventually(lambda: lag_is_zero(redis, fast_settings), 30, "the poison entry acknowledged")
        await asyncio.sleep(1.0)
        assert proc.poll() is None, (tmp_path / "second.log").read_text()[-2000:]
    finally:
        stop_process(proc)
    assert proc.returncode == 0
    letter = (await dead_letters(redis))[entry_id]
    assert base64.b64decode(letter["payload"]) == GARBAGE and "not UTF-8" in letter["reason"]


async def test_a_10_mb_payload_is_dead_lettered_clipped(temporal_env, fast_settings, redis):
    limit = fast_settings.messaging.max_payload_bytes
    payload = json.dumps({"signal_id": "big", "pad": "é" * (5 * 1024 * 1024)})  # 10 MB of UTF-8
    entry_id = await redis.xadd(SIGNALS_STREAM, {"signal": payload})
    consumer = RunningConsumer(SignalConsumer(temporal_env.client, redis, fast_settings, name="big"))
    try:
        await consumer.wait_handled(1)
    finally:
        await consumer.close()
    letter = (await dead_letters(redis))[entry_id]
    assert "payload too large" in letter["reason"]
    assert letter["payload_clipped"] == "true" and int(letter["payload_bytes"]) == len(payload.encode())
    stored = letter["payload"].encode()
    assert len(stored) <= limit and payload.encode().startswith(stored) and len(stored) > limit - 4

    store = DuckDBStore(":memory:")
    try:
        for stream in STREAMS:
            await ensure_group(redis, stream, RECORDER_GROUP)
        await Recorder(redis, store).catch_up()
        assert len(store.dead_letters()[0]["payload"].encode()) <= limit
    finally:
        store.close()


async def test_stale_and_unservable_signals_are_dead_lettered_never_traded(
        temporal_env, order_worker, fast_settings, redis):
    limit = fast_settings.messaging.max_signal_age_s
    old = make_signal(created_at=(datetime.now(timezone.utc) - timedelta(seconds=limit + 60)).isoformat())
    # No created_at, but its entry was appended long ago (a recreated consumer group replays it).
    replayed = make_signal()
    binance = make_signal(exchange="binance")  # config/local.yaml: simulation mode
    fresh = make_signal(quantity="0.01", created_at=datetime.now(timezone.utc).isoformat())
    ids = {"replayed": await redis.xadd(SIGNALS_STREAM, {"signal": replayed.model_dump_json()}, id="1000-0"),
           "old": await redis.xadd(SIGNALS_STREAM, {"signal": old.model_dump_json()}),
           "binance": await redis.xadd(SIGNALS_STREAM, {"signal": binance.model_dump_json()}),
           "fresh": await redis.xadd(SIGNALS_STREAM, {"signal": fresh.model_dump_json()})}
    consumer = RunningConsumer(SignalConsumer(temporal_env.client, redis, fast_settings, name="ages"))
    try:
        await consumer.wait_handled(4)
    finally:
        await consumer.close()
    dead = await dead_letters(redis)
    assert "stale signal: created_at" in dead[ids["old"]]["reason"]
    assert "stale signal: received" in dead[ids["replayed"]]["reason"]
    assert "max_signal_age_s" in dead[ids["old"]]["reason"]
    assert "binance cannot be served in execution mode simulation" in dead[ids["binance"]]["reason"]
    assert ids["fresh"] not in dead
    for never in (old, replayed, binance):
        assert not [w async for w in temporal_env.client.list_workflows(f"WorkflowId = '{never.workflow_id}'")]


async def test_a_start_temporal_refuses_for_good_is_dead_lettered_and_acknowledged(temporal_env, fast_settings, redis):
    """Namespace not found can never succeed: dead-lettered with Temporal's reason, not retried forever."""
    target = temporal_env.client.service_client.config.target_host
    client = await Client.connect(target, namespace="no-such-namespace", data_converter=pydantic_data_converter)
    signals_ = [make_signal(), make_signal()]
    ids = [await redis.xadd(SIGNALS_STREAM, {"signal": s.model_dump_json()}) for s in signals_]
    consumer = RunningConsumer(SignalConsumer(client, redis, fast_settings, name="nowhere"))
    try:
        await consumer.wait_handled(2, timeout=20)
        await eventually(lambda: lag_is_zero(redis, fast_settings), 10, "both acknowledged")
    finally:
        await consumer.close()
    dead = await dead_letters(redis)
    for entry_id in ids:
        assert "Temporal refused to start the order (NOT_FOUND)" in dead[entry_id]["reason"], dead[entry_id]["reason"]
    assert consumer.consumer.stats.backoff_s == 0


async def test_transient_start_errors_are_retried_while_the_rest_of_the_batch_goes_on(fast_settings, redis):
    """Temporal goes away: the good signal waits (pending, retried with backoff, never dead-lettered)
    while the bad one in its batch is dead-lettered and acknowledged; Temporal comes back on the same
    address and the waiting signal becomes its order."""
    from temporalio.testing import WorkflowEnvironment

    from tests.conftest import dev_server_args, free_port
    from workers.runtime import find_binary

    port = free_port()

    async def server() -> WorkflowEnvironment:
        return await WorkflowEnvironment.start_local(
            port=port, dev_server_existing_path=find_binary("temporal"), dev_server_extra_args=dev_server_args(),
            data_converter=pydantic_data_converter, ui=False)

    first = await server()
    client = first.client
    await first.shutdown()  # down before anything is read
    good = make_signal()
    ids = {"good": await redis.xadd(SIGNALS_STREAM, {"signal": good.model_dump_json()}),
           "bad": await redis.xadd(SIGNALS_STREAM, {"signal": "{not json"})}
    consumer = RunningConsumer(SignalConsumer(client, redis, fast_settings, name="patient"))
    second = None
    try:
        await eventually(lambda: consumer.consumer.stats.start_failures >= 2, 30, "retried starts")
        assert consumer.consumer.stats.backoff_s > 0
        dead = await dead_letters(redis)
        assert ids["bad"] in dead and ids["good"] not in dead
        pending = await redis.xpending(SIGNALS_STREAM, GROUP)
        assert pending["pending"] == 1 and pending["min"] == ids["good"]
        second = await server()
        await eventually(lambda: lag_is_zero(redis, fast_settings), 30, "the waiting signal started")
        assert consumer.consumer.stats.started == 1
        assert (await second.client.get_workflow_handle(good.workflow_id).describe()).id == good.workflow_id
    finally:
        await consumer.close()
        if second is not None:
            await second.shutdown()


def test_a_poison_entry_does_not_stop_tom_dev(dev_config, tmp_path):
    """The entry that used to take the whole local stack down: `tom dev` keeps running, dead-letters
    it, and the next signal on the stream still becomes an order."""
    import signal as signals
    import time

    import httpx
    import redis as sync_redis

    from config.settings import load_settings
    from tests.test_dev_stack import read_until, start_dev, stop_and_check_no_orphans

    import yaml

    password = "poison-test-redis-password"  # tom dev's Redis takes the configured one
    document = yaml.safe_load(dev_config.read_text())
    document["messaging"]["password"] = "${REDIS_PASSWORD}"
    dev_config.write_text(yaml.safe_dump(document))
    settings = load_settings(dev_config, env={"REDIS_PASSWORD": password})
    proc = start_dev(dev_config, tmp_path, env={"REDIS_PASSWORD": password})
    try:
        read_until(proc, "stop with Ctrl-C")
        client = sync_redis.Redis(host="127.0.0.1", port=settings.messaging.port, password=password)
        poison = client.xadd(SIGNALS_STREAM, {"signal": GARBAGE}).decode()
        good = make_signal(quantity="0.05")
        client.xadd(SIGNALS_STREAM, {"signal": good.model_dump_json()})
        url = f"http://127.0.0.1:{settings.service.port}/orders/{good.workflow_id}"
        deadline = time.time() + 60
        while time.time() < deadline:
            response = httpx.get(url)
            if response.status_code == 200 and response.json()["state"] == "filled":
                break
            time.sleep(0.2)
        assert response.status_code == 200 and response.json()["state"] == "filled", response.text
        letters = {f[b"message_id"].decode(): f for _, f in client.xrange(DEAD_LETTER_STREAM)}
        assert b"not UTF-8" in letters[poison][b"reason"]
        assert proc.poll() is None
        client.close()
    finally:
        if proc.poll() is None:
            stop_and_check_no_orphans(proc, signals.SIGINT)
