"""Pub/Sub messaging against gcloud's emulator with the real google-cloud-pubsub client.

Signals become orders exactly once however often Pub/Sub delivers them (the same message twice, a
consumer that never acknowledged, a consumer SIGKILLed); bad signals are dead-lettered with their
reason and payload, once; order events and fills are published once per event id / fill id, with
the order id as ordering key, including across a failed, retried publish; a batch that fails is
handed back, not held.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal as signals
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import pytest_asyncio

from messaging import publish_signals
from messaging.pubsub import PubSubEventSink, PubSubNames, PubSubSignalSource, ensure_signal_topology
from oms.events import DEAD_LETTER_STREAM, OrderEvent
from oms.models import Fill, OrderSnapshot, OrderState
from tests.conftest import stop_process, tom_process
from tests.helpers import make_signal
from tests.pubsub_emulator import drain, pubsub_emulator, pubsub_messaging, subscribe_topic  # noqa: F401
from tests.test_consumer import RunningConsumer, eventually, starter_identity
from workers.consumer import SignalConsumer


@pytest.fixture
def ps_settings(fast_settings, pubsub_emulator):
    """fast_settings with messaging on the emulator, under topic names of this test's own."""
    return fast_settings.with_overrides(
        messaging=pubsub_messaging(fast_settings.messaging.model_dump(mode="json"), pubsub_emulator))


@pytest.fixture
def names(ps_settings) -> PubSubNames:
    return PubSubNames.from_settings(ps_settings)


@pytest_asyncio.fixture
async def ps_worker(temporal_env, ps_settings, redis):
    """The worker as `tom worker` runs it, publishing to Pub/Sub (messaging.type pubsub)."""
    from workers.worker import running_worker

    async with running_worker(temporal_env.client, ps_settings, redis) as worker:
        yield worker


async def runs_of(client, workflow_id: str) -> int:
    return len([w async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")])


class NeverAcks(PubSubSignalSource):
    """A consumer that dies after every start and before its acknowledgement: nothing it took is
    acknowledged, and on close its messages are neither acknowledged nor handed back (as after a
    SIGKILL): Pub/Sub redelivers them once the ack deadline has passed."""

    async def ack(self, deliveries) -> None:
        self.unacked = getattr(self, "unacked", 0) + len(deliveries)

    async def release(self, deliveries) -> None:
        pass  # a dead consumer hands nothing back

    async def close(self) -> None:
        # Stopped before the next consumer starts, as a dead process's stream is: a pull still
        # shutting down may go on extending its leases (the likely reason a CI run once waited over
        # 60 s for the redelivery).
        self._pull.cancel()
        try:
            await asyncio.to_thread(self._pull.result, 10)
        except BaseException:  # noqa: B036 - cancelled, as asked: it has stopped
            pass
        await asyncio.to_thread(self._subscriber.close)
        await asyncio.to_thread(self._publisher.stop)


async def test_a_signal_delivered_twice_and_a_consumer_that_never_acked_make_one_order(
        temporal_env, ps_worker, ps_settings, names, redis):
    """The same signal published twice (two messages) makes one order; a consumer that starts
    orders and dies before acknowledging leaves its messages to be redelivered after the ack
    deadline (messaging.claim_idle_ms, 10 s), and the second consumer finds the orders there:
    duplicates, acknowledged, still one workflow run each, and each order's events and fills are
    on the Pub/Sub topics once. A bad signal taken by the first consumer and redelivered is
    dead-lettered once."""
    client = temporal_env.client
    twice, once = make_signal(quantity="0.05"), make_signal(quantity="0.02", side="sell")
    dead_sub = subscribe_topic(names.project, names.dead, f"{names.dead}-test")
    events_sub = subscribe_topic(names.project, names.order_events, f"{names.order_events}-test", ordered=True)
    fills_sub = subscribe_topic(names.project, names.executions, f"{names.executions}-test", ordered=True)
    await publish_signals(ps_settings, redis, [twice.model_dump_json(), twice.model_dump_json(),
                                               once.model_dump_json(), "{not json"])

    first = RunningConsumer(SignalConsumer(client, redis, ps_settings, name="first",
                                           source=NeverAcks(ps_settings, redis, "first")))
    try:
        await first.wait_handled(4)
    finally:
        await first.close()
    stats = first.consumer.stats
    assert (stats.started, stats.duplicates, stats.dead_lettered) == (2, 1, 1), stats
    assert first.consumer._source.unacked == 4

    second = RunningConsumer(SignalConsumer(client, redis, ps_settings, name="second"))
    try:
        await second.wait_handled(4, timeout=60)  # after the 10 s ack deadline
    finally:
        await second.close()
    stats = second.consumer.stats
    assert (stats.started, stats.duplicates, stats.dead_lettered) == (0, 3, 1), stats

    snapshots = []
    for signal in (twice, once):
        snapshot = await client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot).result()
        assert snapshot.state == OrderState.FILLED
        assert await runs_of(client, signal.workflow_id) == 1
        snapshots.append(snapshot)
    # Every transition on <prefix>order-events and every fill on <prefix>executions, once each, in
    # order per order (the ordering key), carrying the ids consumers dedupe by.
    transitions = sum(len(s.transitions) for s in snapshots)
    events = await asyncio.to_thread(drain, events_sub, transitions)
    ids = [e.attributes["event_id"] for e in events]
    assert len(ids) == len(set(ids)) == transitions
    for snapshot in snapshots:
        mine = [json.loads(e.data) for e in events if e.ordering_key == snapshot.order_id]
        assert [m["state"] for m in mine] == [t.state.value for t in snapshot.transitions]
        assert [m["event_id"] for m in mine] == [f"{snapshot.order_id}:{i}" for i in range(len(mine))]
    fills = await asyncio.to_thread(drain, fills_sub, 2)
    fill_ids = [f.attributes["fill_id"] for f in fills]
    assert len(fill_ids) == len(set(fill_ids)) == len(fills)
    for snapshot in snapshots:
        mine = [f for f in fills if f.ordering_key == snapshot.order_id]
        assert all(f.attributes["order_id"] == snapshot.order_id for f in mine)
        assert sum(Decimal(json.loads(f.data)["quantity"]) for f in mine) == snapshot.filled_quantity
    dead = await asyncio.to_thread(drain, dead_sub, 1)
    assert len(dead) == 1, [d.attributes for d in dead]  # dead-lettered twice, published once
    assert dead[0].data == b"{not json" and dead[0].attributes["reason"].startswith("malformed JSON")
    assert dead[0].attributes["source"] == names.subscription
    # The recorder's feed (the database's dead_letters table) has it once too, with its reason.
    entries = await redis.xrange(DEAD_LETTER_STREAM)
    assert [(e["payload"], e["source"]) for _, e in entries] == [("{not json", names.subscription)]


async def test_bad_signals_are_dead_lettered_with_reason_and_payload(temporal_env, ps_settings, names, redis):
    """Not UTF-8, not JSON, missing fields, too large: each one message on <prefix>signals-dead
    whose body is the payload as received (clipped to max_payload_bytes) and whose attributes
    say why, where from and how big; the consumer acknowledges them and lives on."""
    dead_sub = subscribe_topic(names.project, names.dead, f"{names.dead}-test")
    big = json.dumps({"pad": "x" * 2_000_000})
    limit = ps_settings.messaging.max_payload_bytes
    from google.cloud import pubsub_v1

    await asyncio.to_thread(ensure_signal_topology, ps_settings)  # topic and subscription, then raw bytes
    publisher = pubsub_v1.PublisherClient()
    try:
        bodies = (b"\xff\xfe not utf-8", b"[1, 2]", b'{"signal_id": "x"}', big.encode())
        for body in bodies:
            await asyncio.wrap_future(publisher.publish(names.topic(names.signals), body))
    finally:
        publisher.stop()
    consumer = RunningConsumer(SignalConsumer(temporal_env.client, redis, ps_settings, name="bad"))
    try:
        await consumer.wait_handled(4)
    finally:
        await consumer.close()
    dead = {int(d.attributes["payload_bytes"]): d for d in await asyncio.to_thread(drain, dead_sub, 4)}
    assert sorted(dead) == sorted(len(b) for b in bodies)
    not_utf8 = dead[len(bodies[0])]
    assert not_utf8.data == bodies[0] and "not UTF-8" in not_utf8.attributes["reason"]
    assert "a signal is a JSON object" in dead[len(bodies[1])].attributes["reason"]
    assert dead[len(bodies[2])].data == bodies[2] and "missing field" in dead[len(bodies[2])].attributes["reason"]
    clipped = dead[len(big)]
    assert clipped.attributes["payload_clipped"] == "true" and clipped.data == big.encode()[:limit]
    assert "payload too large" in clipped.attributes["reason"]
    assert all(d.attributes["source"] == names.subscription and d.attributes["message_id"] for d in dead.values())


def _event(order_id: str, index: int, state: OrderState) -> OrderEvent:
    now = datetime.now(timezone.utc)
    snapshot = OrderSnapshot.model_validate({
        "order_id": order_id, "signal_id": order_id.removeprefix("order-"), "strategy_id": "s",
        "client_order_id": order_id, "symbol": "ETH/USDT", "side": "buy", "order_type": "market",
        "time_in_force": "GTC", "quantity": "1", "state": state.value, "exchange": "simulation", "created_at": now, "updated_at": now})
    return OrderEvent(event_id=f"{order_id}:{index}", order_id=order_id, state=state, at=now, snapshot=snapshot)


def _fill(order_id: str, trade: int) -> Fill:
    return Fill(fill_id=f"{order_id}:{trade}", order_id=order_id, strategy_id="s", symbol="ETH/USDT", side="buy",
                quantity=Decimal("0.5"), price=Decimal("2000"), venue="simulation", at=datetime.now(timezone.utc))


async def test_events_and_fills_are_published_once_across_a_failed_and_retried_publish(ps_settings, names, redis):
    """A publish retried after success publishes nothing again; a publish that failed half-way
    (the executions topic is gone) publishes, on retry, only what had not been confirmed. Every
    message carries its event_id / fill_id and order_id, with the order id as ordering key."""
    from google.cloud import pubsub_v1

    events_sub = subscribe_topic(names.project, names.order_events, f"{names.order_events}-test", ordered=True)
    fills_sub = subscribe_topic(names.project, names.executions, f"{names.executions}-test", ordered=True)
    sink = PubSubEventSink(ps_settings, redis)
    try:
        a, b = "order-a1", "order-b2"
        first = [_event(a, 0, OrderState.CREATED), _event(a, 1, OrderState.VALIDATED), _event(b, 0, OrderState.CREATED)]
        assert await sink.publish(first, [_fill(a, 1)]) == 4
        assert await sink.publish(first, [_fill(a, 1)]) == 0  # the activity retried after success

        admin = pubsub_v1.PublisherClient()
        await asyncio.to_thread(admin.delete_topic, topic=names.topic(names.executions))
        later = [_event(a, 2, OrderState.SUBMITTED), _event(a, 3, OrderState.FILLED)]
        with pytest.raises(Exception):
            await sink.publish(later, [_fill(a, 2), _fill(b, 1)])
        await asyncio.to_thread(admin.create_topic, name=names.topic(names.executions))
        admin.stop()
        fills_sub = subscribe_topic(names.project, names.executions, f"{names.executions}-test2", ordered=True)
        assert await sink.publish(later, [_fill(a, 2), _fill(b, 1)]) == 2  # only the fills were left
        assert await sink.publish(later, [_fill(a, 2), _fill(b, 1)]) == 0
    finally:
        await sink.close()

    events = await asyncio.to_thread(drain, events_sub, 5)
    assert sorted(e.attributes["event_id"] for e in events) == [f"{a}:0", f"{a}:1", f"{a}:2", f"{a}:3", f"{b}:0"]
    assert all(e.ordering_key == e.attributes["order_id"] == json.loads(e.data)["order_id"] for e in events)
    assert [e.attributes["event_id"] for e in events if e.ordering_key == a] == [f"{a}:{i}" for i in range(4)]
    fills = await asyncio.to_thread(drain, fills_sub, 2)
    assert sorted(f.attributes["fill_id"] for f in fills) == [f"{a}:2", f"{b}:1"]
    assert all(f.ordering_key == f.attributes["order_id"] for f in fills)
    # The Redis streams (the recorder's feed) have every item once as well.
    assert len(await redis.xrange("order_events")) == 5 and len(await redis.xrange("executions")) == 3


async def test_a_sigkilled_consumer_process_loses_no_signal_and_doubles_none(
        temporal_env, ps_worker, ps_settings, names, redis, tmp_path):
    """`tom consume` on Pub/Sub takes 10 signals and is SIGKILLed as soon as the first order
    exists; a second consumer gets whatever it had not acknowledged (after the ack deadline): 10
    orders, one workflow run each, all filled."""
    client = temporal_env.client
    config = tmp_path / "config.yaml"
    target = client.service_client.config.target_host
    config.write_text(ps_settings.with_overrides(
        temporal={**ps_settings.temporal.model_dump(mode="json"), "address": target}).to_yaml())
    batch = [make_signal(quantity="0.01") for _ in range(10)]
    await publish_signals(ps_settings, redis, [s.model_dump_json() for s in batch])
    doomed = tom_process(config, "consume", "--name", "doomed", log_path=tmp_path / "doomed.log")
    try:
        async def any_started():
            return (await client.count_workflows(f"TaskQueue = '{ps_settings.temporal.task_queue}'")).count > 0
        await eventually(any_started, 60, "the first order started by the doomed consumer", interval=0.02)
        os.killpg(doomed.pid, signals.SIGKILL)
        doomed.wait(10)
    finally:
        stop_process(doomed, expect=None)
    survivor = RunningConsumer(SignalConsumer(client, redis, ps_settings, name="survivor"))
    try:
        async def all_filled():
            done = await client.count_workflows(
                f"TaskQueue = '{ps_settings.temporal.task_queue}' AND ExecutionStatus = 'Completed'")
            return done.count >= len(batch)
        await eventually(all_filled, 90, "10 completed orders", interval=0.5)
    finally:
        await survivor.close()
    runs = [w async for w in client.list_workflows(f"TaskQueue = '{ps_settings.temporal.task_queue}'")]
    assert sorted(w.id for w in runs) == sorted(s.workflow_id for s in batch)  # one run each, none lost
    # Each order was started by exactly one of the two: the survivor started those the doomed one had not.
    starters = [await starter_identity(client, s.workflow_id) for s in batch]
    by_doomed = sum(1 for who in starters if who.startswith(f"{doomed.pid}@"))
    assert by_doomed >= 1 and survivor.consumer.stats.started == len(batch) - by_doomed, (by_doomed, survivor.consumer.stats)


def test_without_java_or_the_jar_the_emulator_tests_skip_saying_why_and_fail_under_ci(monkeypatch, tmp_path):
    import shutil

    from tests import pubsub_emulator as module

    real_which = shutil.which
    monkeypatch.setattr(module.shutil, "which", lambda name: None if name == "java" else real_which(name))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no `java` on PATH"):
        module.find_emulator_jar()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"cannot run: no `java` on PATH .*CI must have it"):
        module.find_emulator_jar()
    monkeypatch.setattr(module.shutil, "which", lambda name: str(tmp_path / name))  # an SDK without the jar
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: type("R", (), {"stdout": str(tmp_path)})())
    with pytest.raises(pytest.fail.Exception, match=r"the emulator jar is not at"):
        module.find_emulator_jar()


async def test_a_batch_that_fails_is_handed_back_and_done_once_the_transport_recovers(
        temporal_env, ps_settings, names, redis):
    """The dead-letter topic disappears under a running consumer: dead-lettering fails, the
    consumer hands the message back (a nack, not a lease held for an hour) and tries again; once the
    topic is back the signal is dead-lettered, once."""
    from google.cloud import pubsub_v1

    consumer = RunningConsumer(SignalConsumer(temporal_env.client, redis, ps_settings, name="flaky"))
    admin = pubsub_v1.PublisherClient()
    try:
        await eventually(lambda: consumer.consumer._source._pull is not None, 30, "the consumer pulling")
        await asyncio.to_thread(admin.delete_topic, topic=names.topic(names.dead))
        await asyncio.wrap_future(admin.publish(names.topic(names.signals), b"[]"))
        stats = consumer.consumer.stats
        await eventually(lambda: stats.dead_lettered >= 2, 30, "two failed attempts at the dead letter")
        assert "NotFound" in (stats.last_error or ""), stats
        assert not await redis.exists(DEAD_LETTER_STREAM)
        await asyncio.to_thread(admin.create_topic, name=names.topic(names.dead))
        dead_sub = subscribe_topic(names.project, names.dead, f"{names.dead}-test")
        await eventually(lambda: redis.exists(DEAD_LETTER_STREAM), 30, "the dead letter written")
    finally:
        admin.stop()
        await consumer.close()
    dead = await asyncio.to_thread(drain, dead_sub, 1)
    assert [d.data for d in dead] == [b"[]"] and "a signal is a JSON object" in dead[0].attributes["reason"]
