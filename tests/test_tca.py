"""TCA and the report's aggregates on hand-built orders with known answers (exact Decimals), and
the DuckDB views against the pure functions on the same orders."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from analytics.metrics import DIMENSIONS, aggregate, records, venue_performance
from analytics.report import build_report, jsonable, render_text
from analytics.views import view_statements
from oms.tca import parent_tca
from tests import tca_data as data
from storage.duckdb import DuckDBStore


def test_buy_filled_costs():
    tca = data.BUY.tca
    assert (tca.decision_price, tca.arrival_price, tca.average_fill_price) == (D(100), D(101), D("101.5"))
    assert tca.quote_currency == "USDT" and tca.fill_ratio == 1
    assert tca.notional == D(203)
    assert tca.arrival_slippage == D(-1) and tca.arrival_slippage_bps == D("-49.5050")
    assert tca.fees == D("0.406") and tca.fee_bps == D("-20.0000")
    s = tca.shortfall
    assert (s.delay, s.execution, s.fees, s.opportunity) == (D(-2), D(-1), D("-0.406"), D(0))
    assert s.total == D("-3.406") and s.total_bps == D("-170.3000")
    assert (tca.estimated_fee, tca.estimated_slippage_bps) == (D("0.404"), D(30))


def test_sell_partial_fill_with_rebate_in_a_second_quote_currency():
    tca = data.SELL.tca
    assert tca.quote_currency == "BTC" and tca.fill_ratio == D("0.25")
    assert tca.arrival_slippage == D("-0.0005") and tca.arrival_slippage_bps == D("-102.0408")
    assert tca.fees == D("-0.0000097") and tca.fee_bps == D("2.0000")  # a rebate is a gain
    s = tca.shortfall
    assert (s.delay, s.execution, s.fees, s.opportunity) == (D("-0.001"), D("-0.0005"), D("0.0000097"), D("-0.0045"))
    assert s.total == D("-0.0059903") and s.total_bps == D("-299.5150")


def test_latency_stages_from_transitions():
    lat = data.SELL.tca.latency
    assert lat.signal_to_start_ms == D(50) and lat.start_to_validated_ms == D(5)
    assert lat.validated_to_sent_ms == D(5) and lat.sent_to_ack_ms == D(20)
    assert lat.ack_to_first_fill_ms == D(170) and lat.first_fill_to_terminal_ms == D(800)
    assert lat.execution_ms == D(990) and lat.total_ms == D(1000)
    denied = data.DENIED.tca.latency  # never sent: only the stages it lived through
    assert denied.signal_to_start_ms is None and denied.validated_to_sent_ms is None
    assert denied.execution_ms is None and denied.total_ms == D(3)
    unknown = data.UNKNOWN_THEN_FILLED.tca.latency  # `unknown` is no venue answer: the fill is
    assert unknown.sent_to_ack_ms == D(5990)


def test_no_fill_has_no_slippage_but_an_opportunity_cost_of_zero_at_arrival():
    tca = data.REJECTED.tca
    assert tca.arrival_slippage is None and tca.fee_bps is None and tca.notional == 0
    assert tca.shortfall.total == 0  # marked at arrival = decision


def test_parent_aggregates_its_children_and_reports_twap_vwap():
    result = parent_tca(data.PARENT, [data.CHILD1, data.CHILD2], data.PATH)
    assert result.children == 2
    assert result.order.average_fill_price == D("20.16") and result.order.fill_ratio == 1
    assert result.order.fees == D("0.2016")
    assert result.order.arrival_slippage == D("-1.1") and result.order.arrival_slippage_bps == D("-54.8628")
    assert result.benchmarks.twap == D("20.15") and result.benchmarks.vwap == D("20.2")
    assert result.benchmarks.slippage_vs_twap_bps == D("-4.9628")
    assert result.benchmarks.slippage_vs_vwap_bps == D("19.8020")


def _row(rows, key, quote):
    return next(r for r in rows if r["key"] == key and r["quote_currency"] == quote)


def test_aggregates_by_venue_with_known_answers():
    rows = records(data.ALL)
    parent = next(r for r in rows if r.order_id == "order-twap")
    assert parent.is_parent and next(r for r in rows if r.order_id == "order-twap-c1").parent_id == "order-twap"
    binance = _row(aggregate(rows, "venue"), "binance", "USDT")  # the parent is not counted, its children are
    assert binance["orders"] == 6 and binance["outcomes"] == {"success": 4, "refused": 2, "failed": 0,
                                                              "unknown": 0, "open": 0}
    assert binance["success_rate"] == D("0.666667") and binance["fill_rate"] == D("0.8")
    assert binance["execution_ms_avg"] == D(1260) and binance["execution_ms_p50"] == D(90)
    assert binance["execution_ms_p99"] == D(5754)
    assert binance["notional"] == D("504.6") and binance["fees"] == D("0.7076")
    assert binance["slippage"] == D("-1.5") and binance["slippage_bps"] == D("-29.7265")
    assert binance["total_cost"] == D("-2.2076")
    bybit = _row(aggregate(rows, "venue"), "bybit", "BTC")  # never added to USDT
    assert bybit["fill_rate"] == D("0.25") and bybit["notional"] == D("0.0485")
    assert bybit["slippage_bps"] == D("-103.0928") and bybit["total_cost"] == D("-0.0004903")
    algos = {(r["key"], r["quote_currency"]): r["orders"] for r in aggregate(rows, "algorithm")}
    assert algos == {("none", "BTC"): 1, ("none", "USDT"): 4, ("twap", "USDT"): 2}  # children inherit
    days = {(r["key"], r["quote_currency"]) for r in aggregate(rows, "day")}
    assert ("2026-03-03", "USDT") in days and ("2026-03-02", "BTC") in days
    sizes = {r["key"] for r in aggregate(rows, "size_bucket")}
    assert sizes == {"<1k"}


def test_venue_performance_with_known_answers():
    binance = next(r for r in venue_performance(records(data.ALL)) if r["venue"] == "binance")
    assert (binance["orders"], binance["sent"]) == (6, 5)
    assert binance["ack_ms_p50"] == D(30) and binance["ack_ms_p99"] == D(5752)
    assert binance["reject_rate"] == D("0.2") and binance["timeout_rate"] == D("0.2")
    assert binance["unknown_rate"] == D("0.2") and binance["circuit_open_rate"] == 0 and binance["uptime"] == 1


def test_report_document_and_text():
    doc = build_report(data.ALL, paths={"SOL/USDT": data.PATH})
    assert doc["orders"] == 7 and doc["parent_orders"] == 1
    assert {r["quote_currency"] for r in doc["summary"]} == {"USDT", "BTC"}
    assert doc["parents"][0]["slippage_vs_vwap_bps"] == D("19.8020")
    text = render_text(doc)
    for heading in ("by venue", "by size_bucket", "exchange performance", "latency stages", "parent orders"):
        assert heading in text
    assert jsonable(doc)["summary"][0]["fees"] == str(doc["summary"][0]["fees"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = DuckDBStore(tmp_path_factory.mktemp("tca") / "tca.duckdb")
    s.record(data.events(data.ALL), [], [])
    yield s
    s.close()


def _close(sql_value, python_value, places: int = 6):
    """SQL divides in floating point; the pure functions round to their quantum (1e-6, 1e-4 bps)."""
    if python_value is None:
        return sql_value is None
    return abs(D(str(sql_value)) - D(python_value)) <= D(10) ** -places


EXACT = ("orders", "notional", "fees", "slippage", "total_cost", "shortfall")
RATES = ("success_rate", "fill_rate", "execution_ms_avg", "execution_ms_p50", "execution_ms_p99", "slippage_bps")


@pytest.mark.parametrize("dimension", DIMENSIONS)
def test_duckdb_views_match_the_pure_functions(store, dimension):
    expected = aggregate(records(data.ALL), dimension)
    actual = store.rows(f"SELECT * FROM tca_by_{dimension} ORDER BY key, quote_currency")
    assert [(r["key"], r["quote_currency"]) for r in actual] == [(r["key"], r["quote_currency"]) for r in expected]
    for sql, py in zip(actual, expected):
        for field in EXACT:
            assert D(str(sql[field])) == D(py[field]), (dimension, sql["key"], field)
        for field in RATES:
            assert _close(sql[field], py[field], 3), (dimension, sql["key"], field, sql[field], py[field])
        assert sql["n_success"] == py["outcomes"]["success"] and sql["n_refused"] == py["outcomes"]["refused"]


def test_duckdb_venue_view_matches(store):
    expected = venue_performance(records(data.ALL))
    actual = store.rows("SELECT * FROM tca_venue_performance ORDER BY venue")
    assert [r["venue"] for r in actual] == [r["venue"] for r in expected]
    for sql, py in zip(actual, expected):
        for field in ("orders", "sent", "ack_ms_p50", "ack_ms_p99", "reject_rate", "timeout_rate", "unknown_rate",
                      "circuit_open_rate", "uptime"):
            assert _close(sql[field], py[field], 3), (sql["venue"], field, sql[field], py[field])


def test_store_filters_snapshots_by_creation_time(store):
    assert {s.order_id for s in store.order_snapshots(since=data.DAY2)} == {"order-unk"}
    assert "order-unk" not in {s.order_id for s in store.order_snapshots(until=data.DAY2)}


def test_bigquery_views_render_from_the_same_source():
    statements = view_statements("bigquery", "proj.tom")
    assert len(statements) == len(view_statements("duckdb")) == len(DIMENSIONS) + 2
    assert all("`proj.tom." in s for s in statements)
    assert "APPROX_QUANTILES" in statements[1] and "JSON_VALUE" in statements[0]
    with pytest.raises(ValueError):
        view_statements("bigquery")


def test_prometheus_histograms_carry_the_same_definitions():
    from workers import metrics

    metrics.observe_orders(data.ALL)
    text = metrics.render().decode()
    # binance USDT arrival slippage: -49.5050 (buy), 0 (order-unk), -24.9377 and -24.8139 (the children);
    # the parent's own figure is its children's and is not counted again.
    assert 'tom_order_slippage_bps_bucket{le="-50.0",quote_currency="USDT",venue="binance"} 0.0' in text
    assert 'tom_order_slippage_bps_bucket{le="-20.0",quote_currency="USDT",venue="binance"} 3.0' in text
    assert 'tom_order_slippage_bps_bucket{le="0.0",quote_currency="USDT",venue="binance"} 4.0' in text
    # (buckets below zero: no _sum/_count by the OpenMetrics rule; +Inf is the count)
    assert 'tom_order_slippage_bps_bucket{le="+Inf",quote_currency="USDT",venue="binance"} 4.0' in text
    assert 'tom_order_slippage_bps_bucket{le="-100.0",quote_currency="BTC",venue="bybit"} 1.0' in text
    # sent -> ack on binance: 30, 40, 5990, 30, 30 ms
    assert 'tom_order_latency_ms_bucket{le="25.0",stage="sent_to_ack",venue="binance"} 0.0' in text
    assert 'tom_order_latency_ms_bucket{le="50.0",stage="sent_to_ack",venue="binance"} 4.0' in text
    assert 'tom_order_latency_ms_count{stage="sent_to_ack",venue="binance"} 5.0' in text
    metrics.observe_orders([])


def test_prometheus_gauges_use_the_report_definitions():
    from workers import metrics

    metrics.observe_orders(data.ALL)
    text = metrics.render().decode()
    # 5 successes of 7 decided venue orders; fill rate (1 + .25 + 0 + 1 + 1 + 1) / 6 sent and ended
    assert "tom_success_rate 0.714286" in text and "tom_fill_rate 0.708333" in text
    assert 'tom_fees_total{quote_currency="USDT"} 0.7076' in text  # never added to the BTC fees
    assert 'tom_fees_total{quote_currency="BTC"} -9.7e-06' in text
    assert 'tom_slippage_bps_avg{exchange="bybit",quote_currency="BTC"} -103.0928' in text
    # submission -> first fill on binance: 90 (buy), 5990 (order-unk), 90 and 90 (the children)
    assert 'tom_submit_to_fill_ms{exchange="binance",quantile="0.5"} 90.0' in text
    metrics.observe_orders([])


def test_parent_twap_from_the_mids_the_platform_observed_when_no_market_path_is_given():
    """Without market data the parent's interval TWAP is the mean venue mid at its children's
    submissions (20.05 and 20.15): 20.10; bought at 20.16 -> -(0.06 / 20.10) = -29.8507 bps. No
    volume was observed, so no VWAP (never a made-up one)."""
    [parent] = build_report(data.ALL)["parents"]
    assert parent["twap"] == D("20.10") and parent["slippage_vs_twap_bps"] == D("-29.8507")
    assert parent["vwap"] is None and parent["slippage_vs_vwap_bps"] is None
