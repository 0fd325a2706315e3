"""End to end on a dev.yaml-shaped config with Pub/Sub on the emulator and the simulated venue.

`config/dev.yaml` as deployed (its limits, order parameters, cache), with messaging on Pub/Sub,
Redis, Temporal and the database pointed at this test's own instances. The platform runs as the
pods run it: `tom api` (the recorder writes the database), `tom consume`, `tom worker`. A signal
published to Pub/Sub with `tom submit --via stream` becomes a filled order although its worker is
SIGKILLed mid-order and replaced; its events and fills are on the Pub/Sub topics once each (by
event_id / fill_id) and in the database once each.

The database backend is a parameter: `STORED` maps a `database.type` to its settings and to how
the test reads an order's rows back: DuckDB, and BigQuery on its emulator (the bqemulator
virtualenv), each row once.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from activities.venues.simulated import REQUESTS_KEY
from config.settings import load_settings
from messaging.pubsub import PubSubNames
from oms.events import RECORDER_GROUP
from oms.models import OrderSnapshot, OrderState
from tests.conftest import REPO, free_port, free_port_run, run_tom, stop_api, stop_process, tom_process, wait_for_http
from tests.helpers import make_signal
from tests.bigquery_emulator import bigquery_emulator  # noqa: F401  (a fixture the bigquery case asks for)
from tests.pubsub_emulator import drain, pubsub_emulator, pubsub_messaging, subscribe_topic  # noqa: F401
from workers.runtime import available_cores
from tests.test_consumer import eventually


def _duckdb_database(request, tmp_path: Path) -> dict:
    return {"type": "duckdb", "path": str(tmp_path / "orders.duckdb")}


def _duckdb_rows(database: dict, order_id: str) -> tuple[list[str], list[str], str | None]:
    """(event ids, fill ids, state) of one order, as the database holds them."""
    import duckdb

    with duckdb.connect(database["path"], read_only=True) as db:
        events = [r[0] for r in db.execute("SELECT event_id FROM order_events WHERE order_id = ?", [order_id]).fetchall()]
        fills = [r[0] for r in db.execute("SELECT fill_id FROM fills WHERE order_id = ?", [order_id]).fetchall()]
        state = db.execute("SELECT state FROM orders WHERE order_id = ?", [order_id]).fetchone()
    return events, fills, state[0] if state else None


def _bigquery_database(request, tmp_path: Path) -> dict:
    import uuid

    from tests.bigquery_emulator import PROJECT

    endpoint = request.getfixturevalue("bigquery_emulator")
    return {"type": "bigquery", "project": PROJECT, "dataset": f"e2e_{uuid.uuid4().hex[:10]}",
            "emulator_host": endpoint}


def _bigquery_rows(database: dict, order_id: str) -> tuple[list[str], list[str], str | None]:
    """The raw rows of the append-only tables (not the deduplicating reads: stored once means one
    row per id), and the state from the `orders` view."""
    from google.cloud import bigquery

    from storage import open_storage

    base = load_settings(REPO / "config" / "local.yaml", env={})
    store = open_storage(base.with_overrides(database=database), read_only=True)
    table = f"`{database['project']}.{database['dataset']}"
    try:
        param = [bigquery.ScalarQueryParameter("order_id", "STRING", order_id)]
        events = [r["event_id"] for r in store._rows(f"SELECT event_id FROM {table}.order_events` WHERE order_id = @order_id", param)]
        fills = [r["fill_id"] for r in store._rows(f"SELECT fill_id FROM {table}.fills` WHERE order_id = @order_id", param)]
        state = store._rows(f"SELECT state FROM {table}.orders` WHERE order_id = @order_id", param)
    finally:
        store.close()
    return events, fills, state[0]["state"] if state else None


# database.type -> (its `database` settings for this test, from the pytest request (an emulator
# fixture can be had with request.getfixturevalue) and tmp_path; reader of an order's rows once
# `tom api` has stopped)
STORED: dict[str, tuple[Callable[..., dict], Callable[[dict, str], tuple[list[str], list[str], str | None]]]] = {
    "duckdb": (_duckdb_database, _duckdb_rows),
    "bigquery": (_bigquery_database, _bigquery_rows),
}


@pytest.fixture(params=sorted(STORED))
def database(request, tmp_path):
    make, read = STORED[request.param]
    return make(request, tmp_path), read


def dev_shaped_config(tmp_path: Path, temporal_env, redis_url: str, emulator, database: dict) -> Path:
    """config/dev.yaml with messaging on the Pub/Sub emulator and every service local."""
    env = {"QC_API_KEY": "unused", "QC_PROJECT_ID": "1", "REDIS_HOST": "127.0.0.1",
           "REDIS_PORT": redis_url.rsplit(":", 1)[1].split("/")[0],
           "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "TEMPORAL_NAMESPACE": "default"}
    dev = load_settings(REPO / "config" / "dev.yaml", env=env)
    execution = dev.execution.model_dump(mode="json")
    execution.update(mode="simulation", simulation={**execution["simulation"], "delay_ms": 1000})
    settings = dev.with_overrides(
        service={**dev.service.model_dump(mode="json"), "host": "127.0.0.1", "bind": "127.0.0.1",
                 "port": free_port()},
        messaging=pubsub_messaging(dev.messaging.model_dump(mode="json"), emulator),
        database=database, execution=execution,
        # The worker's SDK metrics on loopback ports of this machine's choosing (one per child).
        temporal={**dev.temporal.model_dump(mode="json"), "task_queue": f"e2e-{free_port()}",
                  "metrics_bind": f"127.0.0.1:{free_port_run(available_cores())}"})
    path = tmp_path / "dev-pubsub.yaml"
    path.write_text(settings.to_yaml())
    return path


async def test_a_pubsub_signal_becomes_one_filled_order_across_a_worker_sigkill(
        temporal_env, redis, redis_url, pubsub_emulator, database, tmp_path):
    db_settings, read_rows = database
    config = dev_shaped_config(tmp_path, temporal_env, redis_url, pubsub_emulator, db_settings)
    settings = load_settings(config, env={})
    names = PubSubNames.from_settings(settings)
    events_sub = subscribe_topic(names.project, names.order_events, f"{names.order_events}-e2e", ordered=True)
    fills_sub = subscribe_topic(names.project, names.executions, f"{names.executions}-e2e", ordered=True)
    signal_ = make_signal(quantity="0.2")
    (tmp_path / "signal.json").write_text(signal_.model_dump_json())
    client, order_id = temporal_env.client, signal_.workflow_id

    api = tom_process(config, "api", log_path=tmp_path / "api.log")
    consumer = tom_process(config, "consume", log_path=tmp_path / "consume.log")
    worker = tom_process(config, "worker", log_path=tmp_path / "worker-1.log")
    try:
        published = run_tom(config, "submit", "--via", "stream", "--file", str(tmp_path / "signal.json"))
        assert published.returncode == 0, published.stderr
        assert published.stdout.strip() == f"published {order_id} to {names.topic(names.signals)}"

        # Kill the worker while its submit waits on the simulated venue (which answers after 1 s
        # of the request counter going up): the rest of the order runs on another worker.
        await eventually(lambda: redis.get(REQUESTS_KEY), 60, "the order's submit at the venue")
        cached = await redis.get(f"order:{order_id}")
        assert cached is None or not OrderSnapshot.model_validate_json(cached).is_terminal
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker = tom_process(config, "worker", log_path=tmp_path / "worker-2.log")
        final = await asyncio.wait_for(client.get_workflow_handle(order_id, result_type=OrderSnapshot).result(), 90)
        assert final.state == OrderState.FILLED and final.filled_quantity == Decimal("0.2")
        wait_for_http(f"http://127.0.0.1:{settings.service.port}/healthz", timeout=30, proc=api)

        events = await asyncio.to_thread(drain, events_sub, len(final.transitions))
        fills = await asyncio.to_thread(drain, fills_sub, 1)
        expected_events = {f"{order_id}:{i}" for i in range(len(final.transitions))}
        event_ids = [e.attributes["event_id"] for e in events]
        assert sorted(event_ids) == sorted(expected_events), event_ids  # each once, none missing
        assert [json.loads(e.data)["state"] for e in events] == [t.state.value for t in final.transitions]
        assert {e.ordering_key for e in events} | {f.ordering_key for f in fills} == {order_id}
        fill_ids = [f.attributes["fill_id"] for f in fills]
        assert len(fill_ids) == len(set(fill_ids))
        assert sum(Decimal(json.loads(f.data)["quantity"]) for f in fills) == final.filled_quantity

        async def recorded():  # the recorder in `tom api` has read and acknowledged its whole feed
            for stream in ("order_events", "executions"):
                groups = {g["name"]: g for g in await redis.xinfo_groups(stream)}
                group = groups.get(RECORDER_GROUP)
                last = (await redis.xinfo_stream(stream))["last-generated-id"]
                if group is None or group["pending"] or group["last-delivered-id"] != last:
                    return False
            return True
        await eventually(recorded, 60, "the recorder writing the order's events")
    finally:
        for proc in (worker, consumer):
            stop_process(proc)
        stop_api(api, tmp_path / "api.log")
    stored_events, stored_fills, state = read_rows(db_settings, order_id)
    assert sorted(stored_events) == sorted(expected_events) and sorted(stored_fills) == sorted(fill_ids)
    assert state == "filled"
