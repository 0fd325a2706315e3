"""Prometheus metrics served at GET /metrics.

Order-level figures come from the recorder's database (the one place that sees every order, from
every worker), refreshed at scrape time; consumer figures from the Redis consumer group.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from analytics.metrics import quantile, records
from analytics.report import SLIPPAGE_EDGES, build_report
from oms.models import OrderSnapshot

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

ORDERS_BY_STATE = Gauge("tom_orders", "Orders by current state", ["state"], registry=REGISTRY)
ORDERS_BY_EXCHANGE = Gauge("tom_exchange_orders", "Orders per exchange", ["exchange"], registry=REGISTRY)
# The report's definitions (analytics/metrics.py): see the README's execution analytics table.
FILL_RATE = Gauge("tom_fill_rate", "Mean per-order fill ratio of venue orders that reached a venue and ended",
                  registry=REGISTRY)
SUCCESS_RATE = Gauge("tom_success_rate", "Filled, cancelled or expired / (those + refused, failed, unknown)",
                     registry=REGISTRY)
FEES = Gauge("tom_fees_total", "Fees paid per quote currency (rebates negative)", ["quote_currency"], registry=REGISTRY)
SLIPPAGE = Gauge("tom_slippage_bps_avg", "Notional-weighted arrival slippage, bps, negative is a cost",
                 ["exchange", "quote_currency"], registry=REGISTRY)
LATENCY = Gauge("tom_submit_to_fill_ms", "Submission to first fill latency", ["exchange", "quantile"],
                registry=REGISTRY)
DEAD_LETTERS = Gauge("tom_dead_letters", "Signals dead-lettered", registry=REGISTRY)
CONSUMER_LAG = Gauge("tom_consumer_lag", "Signals not yet delivered to a consumer", registry=REGISTRY)
CONSUMER_PENDING = Gauge("tom_consumer_pending", "Signals delivered but not yet acknowledged", registry=REGISTRY)
VENUE_CIRCUIT = Gauge("tom_venue_circuit_state", "Circuit breaker per venue account: 0 closed, 1 half-open, 2 open",
                      ["exchange", "account"], registry=REGISTRY)
VENUE_PAUSED = Gauge("tom_venue_paused_seconds", "Remaining 429/418 pause per venue account",
                     ["exchange", "account"], registry=REGISTRY)
VENUE_PAUSES = Gauge("tom_venue_pauses", "Rate-limit pauses per venue account so far", ["exchange", "account"],
                     registry=REGISTRY)
VENUE_BREAKER_OPENED = Gauge("tom_venue_circuit_opened", "Times the breaker opened per venue account",
                             ["exchange", "account"], registry=REGISTRY)
ORDER_ANOMALIES = Gauge("tom_order_anomalies", "Order outcomes the transition table did not foresee, per exchange",
                        ["exchange"], registry=REGISTRY)
SIGNALS_REJECTED = Counter("tom_api_signals_rejected", "Signals refused by POST /signals", registry=REGISTRY)


def observe_store(report: dict[str, Any]) -> None:
    ORDERS_BY_STATE.clear()
    for state, count in report["states"].items():
        ORDERS_BY_STATE.labels(state=state).set(count)
    DEAD_LETTERS.set(report["dead_letters"])
    for row in report["exchanges"]:
        ORDERS_BY_EXCHANGE.labels(exchange=row["exchange"]).set(row["orders"])


_CIRCUIT_LEVEL = {"closed": 0, "half_open": 1, "open": 2}


def observe_venue(exchange: str, account: str, status: dict[str, Any]) -> None:
    VENUE_CIRCUIT.labels(exchange=exchange, account=account).set(_CIRCUIT_LEVEL.get(status["circuit"], 2))
    VENUE_PAUSED.labels(exchange=exchange, account=account).set(status["paused_for_s"])
    VENUE_PAUSES.labels(exchange=exchange, account=account).set(status["pauses"])
    VENUE_BREAKER_OPENED.labels(exchange=exchange, account=account).set(status["opened"])


def render() -> bytes:
    return generate_latest(REGISTRY)


def observe_anomalies(per_exchange: dict[str, str]) -> None:
    """From the `metrics:order_anomalies` hash the workflows' record_progress keeps."""
    for exchange, count in per_exchange.items():
        ORDER_ANOMALIES.labels(exchange=exchange).set(int(count))


# --- TCA histograms: the report's definitions (oms/tca.py), rebuilt from the database at each scrape,
# so an order counts once however often the recorder saw it (a counter fed per event could not).
LATENCY_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000)
LATENCY_STAGES = ("sent_to_ack_ms", "execution_ms", "total_ms")


def _histogram(values: list[float], edges) -> tuple[list[tuple[str, float]], float]:
    buckets = [(str(float(edge)), float(sum(1 for v in values if v <= edge))) for edge in edges]
    return [*buckets, ("+Inf", float(len(values)))], float(sum(values))


class TcaCollector:
    """tom_order_latency_ms{venue,stage} and tom_order_slippage_bps{venue,quote_currency} (arrival
    slippage, P&L-signed: negative is a cost), over the venue orders the last scrape read."""

    def __init__(self) -> None:
        self.snapshots: list[OrderSnapshot] = []

    def collect(self):
        latency = HistogramMetricFamily("tom_order_latency_ms", "Order latency stages, ms (oms/tca.py)",
                                        labels=["venue", "stage"])
        slippage = HistogramMetricFamily("tom_order_slippage_bps", "Arrival slippage, bps, negative is a cost",
                                         labels=["venue", "quote_currency"])
        by_stage: dict[tuple[str, str], list[float]] = {}
        by_quote: dict[tuple[str, str], list[float]] = {}
        for snap in self.snapshots:
            if snap.tca is None:
                continue
            for stage in LATENCY_STAGES:
                value = getattr(snap.tca.latency, stage)
                if value is not None:
                    by_stage.setdefault((snap.exchange, stage.removesuffix("_ms")), []).append(float(value))
            if snap.tca.arrival_slippage_bps is not None:
                by_quote.setdefault((snap.exchange, snap.tca.quote_currency), []).append(
                    float(snap.tca.arrival_slippage_bps))
        for labels, values in sorted(by_stage.items()):
            buckets, total = _histogram(values, LATENCY_BUCKETS_MS)
            latency.add_metric(list(labels), buckets, total)
        for labels, values in sorted(by_quote.items()):
            buckets, total = _histogram(values, [float(e) for e in SLIPPAGE_EDGES])
            slippage.add_metric(list(labels), buckets, total)
        yield latency
        yield slippage


TCA = TcaCollector()
REGISTRY.register(TCA)


def observe_orders(snapshots: list[OrderSnapshot]) -> None:
    """The rate, fee, slippage and latency figures from the report's document; venue orders only
    (a parent's latency and cost are its children's)."""
    doc = build_report(snapshots)
    FILL_RATE.set(float(doc["overall"]["fill_rate"] or 0))
    SUCCESS_RATE.set(float(doc["overall"]["success_rate"] or 0))
    FEES.clear()
    for row in doc["summary"]:
        FEES.labels(quote_currency=row["quote_currency"]).set(float(row["fees"]))
    SLIPPAGE.clear()
    for row in doc["by"]["venue"]:
        SLIPPAGE.labels(exchange=row["key"], quote_currency=row["quote_currency"]).set(float(row["slippage_bps"] or 0))
    TCA.snapshots = [s for s, r in zip(snapshots, records(snapshots)) if not r.is_parent]
    to_fill: dict[str, list[Decimal]] = {}
    for snap in TCA.snapshots:
        lat = snap.tca.latency if snap.tca else None
        if lat and lat.sent_to_ack_ms is not None and lat.ack_to_first_fill_ms is not None:
            to_fill.setdefault(snap.exchange, []).append(lat.sent_to_ack_ms + lat.ack_to_first_fill_ms)
    LATENCY.clear()
    for exchange, values in to_fill.items():
        for q in ("0.5", "0.99"):
            LATENCY.labels(exchange=exchange, quantile=q).set(float(quantile(values, Decimal(q))))
