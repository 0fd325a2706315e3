"""The report as users get it: `GET /report` and `tom report --json` (a subprocess) answer the same
document on the same database with a time filter; `tom report --html` writes a page a real browser
shows with every plot."""
from __future__ import annotations

import json

import httpx
import pytest

from config.settings import load_settings
from tests import tca_data as data
from tests.browser import browser_page, screenshot_path  # noqa: F401 (a fixture)
from tests.conftest import REPO, free_port, run_tom
from storage.duckdb import DuckDBStore

PLOTS = ("plot-slippage", "plot-costs", "plot-latency", "plot-fill-rate", "plot-estimate")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """The hand-built orders, recorded as the recorder records them; then closed (readers only)."""
    path = tmp_path_factory.mktemp("report") / "orders.duckdb"
    store = DuckDBStore(path)
    store.record(data.events(data.ALL), [], [])
    store.close()
    return path


@pytest.fixture(scope="module")
def config(database, tmp_path_factory):
    """Local settings on that file, the API port free: `tom report` falls back to the file."""
    settings = load_settings(REPO / "config" / "local.yaml").with_overrides(
        database={"type": "duckdb", "path": str(database)}, service={"host": "127.0.0.1", "port": free_port()})
    path = tmp_path_factory.mktemp("report-config") / "config.yaml"
    path.write_text(settings.to_yaml())
    return path, settings


async def test_get_report_equals_the_cli_json_with_a_time_filter(database, config):
    from workers.api import Services, create_app
    from workers.runtime import redis_client

    path, settings = config
    store = DuckDBStore(database, read_only=True)
    redis = redis_client(settings)  # not connected: /report reads only the database
    try:
        app = create_app(settings, Services(settings, None, redis, store), run_recorder=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            filtered = await client.get("/report", params={"since": "2026-03-02T00:00:00Z",
                                                           "until": "2026-03-03T00:00:00Z"})
            everything = await client.get("/report")
            bad = await client.get("/report", params={"since": "2026-03-02T00:00:00"})
    finally:
        await redis.aclose()
        store.close()
    assert filtered.status_code == 200 and everything.status_code == 200
    assert filtered.json()["orders"] == 6 and everything.json()["orders"] == 7  # order-unk is on day 2
    assert bad.status_code == 422 and "timezone" in bad.json()["detail"]

    cli = run_tom(path, "report", "--json", "--since", "2026-03-02T00:00:00Z", "--until", "2026-03-03T00:00:00Z")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == filtered.json()

    text = run_tom(path, "report")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("orders 7 (+1 parents); states: ") and "exchange performance" in text.stdout
    refused = run_tom(path, "report", "--since", "yesterday")
    assert refused.returncode == 1 and "not an ISO 8601 time" in refused.stderr


async def test_html_report_shows_every_plot_in_a_browser(config, browser_page, tmp_path):
    path, _ = config
    html = tmp_path / "report.html"
    written = run_tom(path, "report", "--html", str(html))
    assert written.returncode == 0, written.stderr
    page = html.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    await browser_page.goto(html.as_uri())
    for plot in PLOTS:
        figure = browser_page.locator(f"figure#{plot}")
        await figure.wait_for(state="visible", timeout=10_000)
        assert await figure.locator("svg rect.bar").count() > 0, f"{plot} has no bars"
        box = await figure.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 100, (plot, box)
    await browser_page.screenshot(path=str(screenshot_path("tca-report")), full_page=True)
