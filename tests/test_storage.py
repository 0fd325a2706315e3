"""The storage interface, the same tests against both backends: DuckDB (a temp file) and BigQuery
(the real google-cloud-bigquery client against the bqemulator process, one dataset per test).

Idempotency is what the recorder relies on: a batch written twice (a retried round), the same item
in two batches, an older snapshot arriving after a newer one, two writers racing on the same items.
"""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from config.settings import load_settings
from oms.events import DeadLetter, OrderEvent
from oms.models import Fill, OrderSnapshot, OrderState, Transition
from storage import OrderStore, open_storage
from tests.bigquery_emulator import PROJECT
from tests.conftest import REPO

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def bigquery_settings(endpoint: str):
    base = load_settings(REPO / "config" / "local.yaml", env={})
    return base.with_overrides(database={"type": "bigquery", "project": PROJECT,
                                         "dataset": f"t_{uuid.uuid4().hex[:12]}", "emulator_host": endpoint})


@pytest.fixture(scope="module")
def bigquery_backend(bigquery_emulator):
    """One dataset for this module's BigQuery tests: creating the report's views takes the emulator
    seconds, so the tables are emptied between tests instead."""
    settings = bigquery_settings(bigquery_emulator)
    store = open_storage(settings)
    yield settings, store
    store.close()


@pytest.fixture(params=["duckdb", "bigquery"])
def backend(request, tmp_path):
    """(settings, store) for one backend, the store opened by the factory as the API opens it."""
    if request.param == "duckdb":
        base = load_settings(REPO / "config" / "local.yaml", env={})
        settings = base.with_overrides(database={"type": "duckdb", "path": str(tmp_path / "orders.duckdb")})
        store = open_storage(settings)
        yield settings, store
        store.close()
        return
    settings, store = request.getfixturevalue("bigquery_backend")
    store.ensure_schema()
    for table in ("order_events", "fills", "dead_letters"):
        store.rows(f"TRUNCATE TABLE {table}")
    yield settings, store


def snapshot(order_id: str, states: list[OrderState], **fields) -> OrderSnapshot:
    transitions = [Transition(state=s, at=T0 + timedelta(seconds=i)) for i, s in enumerate(states)]
    data = {"order_id": order_id, "signal_id": order_id.removeprefix("order-"), "strategy_id": "alpha",
            "client_order_id": order_id, "symbol": "BTC/USDT", "side": "buy", "order_type": "market",
            "time_in_force": "GTC", "quantity": Decimal("2"), "exchange": "binance", "created_at": T0,
            "updated_at": transitions[-1].at, "transitions": transitions, "state": states[-1], **fields}
    return OrderSnapshot.model_validate(data)


def events_of(snap: OrderSnapshot, first: int = 0) -> list[OrderEvent]:
    """The events the workflow publishes for transitions first.., each carrying the snapshot."""
    return [OrderEvent(event_id=f"{snap.order_id}:{i}", order_id=snap.order_id, state=t.state, at=t.at,
                       reason=t.reason, snapshot=snap) for i, t in enumerate(snap.transitions) if i >= first]


def fill(fill_id: str, order_id: str, quantity: str, price: str, side: str = "buy", fee: str = "0.1",
         seconds: int = 5) -> Fill:
    return Fill(fill_id=fill_id, order_id=order_id, strategy_id="alpha", symbol="BTC/USDT", side=side,
                quantity=Decimal(quantity), price=Decimal(price), fee=Decimal(fee), fee_currency="USDT",
                liquidity="taker", venue="binance", at=T0 + timedelta(seconds=seconds))


def dead(message_id: str) -> DeadLetter:
    return DeadLetter(payload='{"bad": true}', reason="side: must be buy or sell", message_id=message_id,
                      at=T0 + timedelta(seconds=1))


SUBMITTED = [OrderState.CREATED, OrderState.VALIDATED, OrderState.SUBMITTED]
FILLED = [*SUBMITTED, OrderState.ACCEPTED, OrderState.FILLED]


def test_the_factory_opens_the_configured_backend(backend):
    settings, store = backend
    assert isinstance(store, OrderStore)
    assert type(store).__module__ == f"storage.{settings.database.type}"
    assert store.ping() is True


def test_writes_read_back_as_the_api_and_report_show_them(backend):
    _, store = backend
    done = snapshot("order-a", FILLED, filled_quantity=Decimal("2"), average_fill_price=Decimal("100.5"),
                    fees=Decimal("0.2"), slippage_bps=Decimal("12.5"), quantity=Decimal("2.123456789012"))
    denied = snapshot("order-b", [OrderState.CREATED, OrderState.DENIED], symbol="ETH/USDT", exchange="bybit",
                      reason="lot_size")
    fills = [fill("f1", "order-a", "1.5", "100"), fill("f2", "order-a", "0.5", "102", seconds=6),
             fill("f3", "order-x", "0.25", "110", side="sell", fee="0.000001", seconds=7)]
    store.record(events_of(done) + events_of(denied), fills, [dead("1-0")])

    orders, total = store.list_orders({}, limit=10, offset=0)
    assert total == 2 and {o.order_id for o in orders} == {"order-a", "order-b"}
    assert store.get_order("order-a") == done  # exact: the snapshot keeps 12 decimals
    assert store.get_order("order-nope") is None
    page, total = store.list_orders({"state": "denied", "exchange": "bybit"}, limit=10, offset=0)
    assert total == 1 and [o.order_id for o in page] == ["order-b"] and page[0].reason == "lot_size"
    first, total = store.list_orders({}, limit=1, offset=1)
    assert total == 2 and len(first) == 1
    assert store.counts() == {"filled": 1, "denied": 1}

    assert [f["fill_id"] for f in store.fills()] == ["f1", "f2", "f3"]
    assert store.fills()[2]["fee"] == Decimal("0.000001") and store.fills()[2]["side"] == "sell"
    (position,) = store.positions()
    assert position["strategy_id"] == "alpha" and position["symbol"] == "BTC/USDT" and position["fills"] == 3
    assert position["net_quantity"] == Decimal("1.75")
    assert position["average_buy_price"] == pytest.approx((1.5 * 100 + 0.5 * 102) / 2)
    assert position["average_sell_price"] == pytest.approx(110)
    assert position["fees"] == Decimal("0.200001")
    (letter,) = store.dead_letters()
    assert letter["message_id"] == "1-0" and letter["reason"] == "side: must be buy or sell"

    report = store.report()
    assert report["orders"] == 2 and report["states"] == {"filled": 1, "denied": 1}
    assert report["fill_rate"] == 0.5 and report["success_rate"] == 0.5 and report["dead_letters"] == 1
    assert report["fees"] == pytest.approx(0.2)
    binance = next(e for e in report["exchanges"] if e["exchange"] == "binance")
    assert binance["filled"] == 1 and binance["terminal"] == 1 and binance["avg_slippage_bps"] == pytest.approx(12.5)
    assert binance["notional"] == pytest.approx(2 * 100.5)
    # submitted at T0+2s, first fill at T0+5s
    assert binance["submit_to_fill_p50_ms"] == pytest.approx(3000) and binance["submit_to_fill_p99_ms"] == pytest.approx(3000)


def test_repeated_writes_are_idempotent(backend):
    settings, store = backend
    early = snapshot("order-a", SUBMITTED)
    late = snapshot("order-a", FILLED, filled_quantity=Decimal("2"), average_fill_price=Decimal("100"))
    batch = (events_of(early), [fill("f1", "order-a", "2", "100")], [dead("1-0")])
    store.record(*batch)
    store.record(*batch)  # a retried round: the same batch again
    store.record(events_of(early)[-1:] * 2, [fill("f1", "order-a", "2", "100")] * 2, [dead("1-0")] * 2)  # twice in one batch
    store.record(events_of(late, first=3), [], [])
    store.record(events_of(early), [], [])  # an older snapshot after the newer one: it never wins
    assert store.get_order("order-a") == late
    orders, total = store.list_orders({}, limit=10, offset=0)
    assert total == 1 and orders == [late]
    assert [f["fill_id"] for f in store.fills()] == ["f1"] and store.positions()[0]["net_quantity"] == Decimal("2")
    assert len(store.dead_letters()) == 1
    assert store.report()["orders"] == 1 and store.report()["dead_letters"] == 1
    # Not only read once: stored once (BigQuery's insert-only MERGE, DuckDB's keys).
    prefix = f"`{PROJECT}.{settings.database.dataset}`." if settings.database.type == "bigquery" else ""
    stored = {table: store._rows(f"SELECT COUNT(*) AS n FROM {prefix}{table}")[0]["n"]
              for table in ("order_events", "fills", "dead_letters")}
    assert stored == {"order_events": 5, "fills": 1, "dead_letters": 1}


def test_a_newer_snapshot_in_the_same_batch_wins_whatever_the_order(backend):
    _, store = backend
    early, late = snapshot("order-a", SUBMITTED), snapshot("order-a", FILLED)
    store.record(events_of(late, first=3) + events_of(early), [], [])
    assert store.get_order("order-a").state == OrderState.FILLED


def test_concurrent_writers_store_each_item_once(backend, request, tmp_path):
    """Two writers (two clients for BigQuery; two threads on the one connection DuckDB allows)
    racing to write the same overlapping batches."""
    settings, store = backend
    other = open_storage(settings) if settings.database.type == "bigquery" else store
    snaps = [snapshot(f"order-{i}", FILLED) for i in range(6)]
    fills = [fill(f"f{i}", f"order-{i}", "1", "100") for i in range(6)]
    errors: list[BaseException] = []

    def write(target: OrderStore, part: slice) -> None:
        try:
            for _ in range(2):
                target.record([e for s in snaps[part] for e in events_of(s)], fills[part], [dead("1-0")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(store, slice(0, 4))),
               threading.Thread(target=write, args=(other, slice(2, 6)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if other is not store:
        other.close()
    assert not errors, errors
    orders, total = store.list_orders({}, limit=100, offset=0)
    assert total == 6 and sorted(o.order_id for o in orders) == [f"order-{i}" for i in range(6)]
    assert sorted(f["fill_id"] for f in store.fills()) == [f"f{i}" for i in range(6)]
    assert store.positions()[0]["fills"] == 6 and len(store.dead_letters()) == 1
    assert store.report()["orders"] == 6 and store.counts() == {"filled": 6}


def test_a_value_the_database_cannot_hold_is_a_row_error(backend):
    """The recorder sets such an entry aside (it catches store.row_errors) instead of retrying forever."""
    _, store = backend
    with pytest.raises(store.row_errors):
        store.record([], [fill("huge", "order-a", "1e40", "1")], [])
    store.record([], [fill("ok", "order-a", "1", "1")], [])
    assert [f["fill_id"] for f in store.fills()] == ["ok"]


def test_analytics_views_run_where_each_backend_creates_its_views(backend, monkeypatch, request, tmp_path):
    """The hook for analytics.views.view_statements(dialect): each backend runs the statements for
    its dialect after its own tables, unqualified names resolving to its dataset."""
    settings, _ = backend
    if settings.database.type == "bigquery":  # a dataset of its own: the views change
        settings = bigquery_settings(request.getfixturevalue("bigquery_emulator"))
    asked: list[str] = []

    def statements(dialect: str, dataset: str | None = None) -> list[str]:
        asked.append(dialect)
        return ["CREATE OR REPLACE VIEW filled_orders AS SELECT order_id FROM orders WHERE state = 'filled'"]

    monkeypatch.setattr(f"storage.{settings.database.type}.analytics_view_statements", statements)
    store = open_storage(settings)
    try:
        store.record(events_of(snapshot("order-a", FILLED)) + events_of(snapshot("order-b", SUBMITTED)), [], [])
        assert asked == [settings.database.type]
        if settings.database.type == "duckdb":
            rows = store._rows("SELECT order_id FROM filled_orders")
        else:
            rows = store._rows(f"SELECT order_id FROM `{PROJECT}.{settings.database.dataset}.filled_orders`")
        assert rows == [{"order_id": "order-a"}]
    finally:
        store.close()


def test_bigquery_settings_load_with_the_emulator_from_the_environment(tmp_path):
    path = tmp_path / "bq.yaml"
    path.write_text("database:\n  type: bigquery\n  project: my-project\n  dataset: trading\n  location: EU\n"
                    "  emulator_host: ${BIGQUERY_EMULATOR_HOST:-}\n")
    local = load_settings(path, env={"BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050"}).database
    assert (local.type, local.project, local.dataset, local.location, local.emulator_host) == (
        "bigquery", "my-project", "trading", "EU", "http://127.0.0.1:9050")
    assert load_settings(path, env={}).database.emulator_host is None  # Google, with ADC
