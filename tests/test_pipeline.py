"""Signals stream -> consumer -> OrderWorkflow -> streams -> recorder -> DuckDB, all real."""
import asyncio
import json
from decimal import Decimal


from oms.events import DEAD_LETTER_STREAM, SIGNALS_STREAM
from oms.models import OrderSnapshot
from tests.helpers import executions, make_signal
from workers.consumer import SignalConsumer, consumer_lag
from workers.recorder import Recorder
from storage.duckdb import DuckDBStore


async def publish(redis, payloads):
    for payload in payloads:
        await redis.xadd(SIGNALS_STREAM, {"signal": payload})


async def wait_terminal(client, order_ids, timeout=60):
    async def one(order_id):
        return await client.get_workflow_handle(order_id, result_type=OrderSnapshot).result()
    return await asyncio.wait_for(asyncio.gather(*(one(o) for o in order_ids)), timeout)


async def run_consumer_until(consumer, condition, timeout=60):
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, consumer.stats
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_signals_become_orders_once_and_bad_ones_are_dead_lettered(
        temporal_env, order_worker, fast_settings, redis, tmp_path):
    good = [make_signal(quantity="0.05") for _ in range(5)]
    bad = ["{not json", json.dumps({"signal_id": "x1"}), json.dumps([1, 2]),
           json.dumps({**json.loads(good[0].model_dump_json()), "signal_id": "bad-sym", "symbol": "ZZZ/USDT"}),
           json.dumps({**json.loads(good[0].model_dump_json()), "signal_id": "bad-qty", "quantity": "1e30"})]
    payloads = [g.model_dump_json() for g in good]
    await publish(redis, payloads + payloads + payloads + bad)  # every good signal delivered 3 times
    consumer = SignalConsumer(temporal_env.client, redis, fast_settings, name="c1")
    await run_consumer_until(consumer, lambda: consumer.stats.started + consumer.stats.duplicates
                             + consumer.stats.dead_lettered == 20)
    assert consumer.stats.started == 5 and consumer.stats.duplicates == 10
    assert consumer.stats.dead_lettered == 5
    snaps = await wait_terminal(temporal_env.client, [g.workflow_id for g in good])
    assert all(s.state == "filled" for s in snaps)
    assert await consumer_lag(redis, fast_settings) == {"lag": 0, "pending": 0}

    dead = await redis.xrange(DEAD_LETTER_STREAM)
    reasons = {fields["reason"] for _, fields in dead}
    assert any(r.startswith("malformed JSON") for r in reasons)
    assert any("missing field strategy_id" in r for r in reasons)
    assert any("unknown symbol ZZZ/USDT" in r for r in reasons)
    assert any("not a plausible value" in r for r in reasons)
    assert {fields["payload"] for _, fields in dead} == set(bad)

    store = DuckDBStore(tmp_path / "rec.duckdb")
    recorder = Recorder(redis, store)
    from workers.consumer import ensure_group
    from workers.recorder import STREAMS
    from oms.events import RECORDER_GROUP
    for stream in STREAMS:
        await ensure_group(redis, stream, RECORDER_GROUP)
    await recorder.catch_up()
    await recorder.catch_up()  # nothing new: nothing written twice
    fills = store.fills()
    published = await executions(redis)
    assert sorted(f["fill_id"] for f in fills) == sorted(f["fill_id"] for f in published)
    assert len({f["fill_id"] for f in fills}) == len(fills)
    positions = store.positions()
    assert sum(p["net_quantity"] for p in positions) == Decimal("0.25")
    assert len(store.dead_letters()) == 5
    orders, total = store.list_orders({"state": "filled"}, 100, 0)
    assert total == 5 and {o.order_id for o in orders} == {g.workflow_id for g in good}
    report = store.report()
    assert report["fill_rate"] == 1.0 and report["orders"] == 5
    store.close()


async def test_redelivery_after_order_finished_makes_no_second_order(temporal_env, order_worker, fast_settings, redis):
    signal = make_signal()
    await publish(redis, [signal.model_dump_json()])
    consumer = SignalConsumer(temporal_env.client, redis, fast_settings, name="c1")
    await run_consumer_until(consumer, lambda: consumer.stats.started == 1)
    await wait_terminal(temporal_env.client, [signal.workflow_id])
    await publish(redis, [signal.model_dump_json()])
    await run_consumer_until(consumer, lambda: consumer.stats.duplicates == 1)
    runs = [w async for w in temporal_env.client.list_workflows(f"WorkflowId = '{signal.workflow_id}'")]
    assert len(runs) == 1
