"""`tom api` and `tom worker` as real processes with `database.type: bigquery` (the bqemulator
process): the recorder writes BigQuery, /orders, /positions and /report read it, /readyz passes,
and `tom report` reads it directly when the API is stopped."""
import json
import time
import uuid

import httpx

from storage import open_storage
from tests.bigquery_emulator import PROJECT
from tests.conftest import run_tom, stop_api, stop_process, tom_process, wait_for_http
from tests.helpers import make_signal


def test_the_api_reads_and_the_recorder_writes_bigquery(stack_settings, tmp_path, redis, bigquery_emulator):
    settings = stack_settings.with_overrides(database={
        "type": "bigquery", "project": PROJECT, "dataset": f"api_{uuid.uuid4().hex[:10]}",
        "emulator_host": bigquery_emulator})
    config = tmp_path / "config.yaml"
    config.write_text(settings.to_yaml())
    worker = tom_process(config, "worker", "--processes", "1", log_path=tmp_path / "worker.log")
    api = tom_process(config, "api", log_path=tmp_path / "api.log")
    url = f"http://127.0.0.1:{settings.service.port}"
    try:
        wait_for_http(f"{url}/healthz", proc=api)
        signal = make_signal(quantity="0.1")
        assert httpx.post(f"{url}/signals", json=signal.model_dump(mode="json", exclude_none=True)).status_code == 202

        deadline = time.time() + 60
        while time.time() < deadline:  # the recorder writes BigQuery asynchronously
            page = httpx.get(f"{url}/orders", params={"state": "filled"}, timeout=30)
            assert page.status_code == 200, page.text
            if [o["order_id"] for o in page.json()["orders"]] == [signal.workflow_id]:
                break
            time.sleep(0.3)
        assert [o["order_id"] for o in page.json()["orders"]] == [signal.workflow_id], page.text
        assert page.json()["orders"][0]["filled_quantity"] == "0.1"

        positions = httpx.get(f"{url}/positions", timeout=30)
        assert positions.status_code == 200, positions.text
        assert [(p["strategy_id"], p["symbol"], p["net_quantity"]) for p in positions.json()] == [
            ("test", "ETH/USDT", "0.100000000")]
        report = httpx.get(f"{url}/report", timeout=30)
        assert report.status_code == 200 and report.json()["orders"] == 1 and report.json()["states"] == {"filled": 1}
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"]["ok"] is True
    finally:
        stop_api(api, tmp_path / "api.log")
        stop_process(worker)
    # With the API stopped, `tom report` reads BigQuery directly: the same order.
    offline = run_tom(config, "report", "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["orders"] == 1 and json.loads(offline.stdout)["states"] == {"filled": 1}
    # What the API showed is in BigQuery itself, one row per event and per fill.
    store = open_storage(settings, read_only=True)
    try:
        events = store._rows(f"SELECT event_id FROM `{PROJECT}.{settings.database.dataset}.order_events` "
                             f"WHERE order_id = '{signal.workflow_id}'")
        assert len(events) == len({e["event_id"] for e in events}) >= 4
        assert len(store.fills()) == 1 and store.fills()[0]["order_id"] == signal.workflow_id
    finally:
        store.close()
