"""Prometheus metrics served at GET /metrics.

Order-level figures come from the recorder's database (the one place that sees every order, from
every worker), refreshed at scrape time; consumer figures from the Redis consumer group.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

ORDERS_BY_STATE = Gauge("tom_orders", "Orders by current state", ["state"], registry=REGISTRY)
ORDERS_BY_EXCHANGE = Gauge("tom_exchange_orders", "Orders per exchange", ["exchange"], registry=REGISTRY)
FILL_RATE = Gauge("tom_fill_rate", "Share of orders fully filled", registry=REGISTRY)
SUCCESS_RATE = Gauge("tom_success_rate", "Share of orders not denied, rejected or failed", registry=REGISTRY)
FEES = Gauge("tom_fees_total", "Fees paid, quote currency", registry=REGISTRY)
SLIPPAGE = Gauge("tom_slippage_bps_avg", "Average slippage against the reference price", ["exchange"],
                 registry=REGISTRY)
LATENCY = Gauge("tom_submit_to_fill_ms", "Submission to first fill latency", ["exchange", "quantile"],
                registry=REGISTRY)
DEAD_LETTERS = Gauge("tom_dead_letters", "Signals dead-lettered", registry=REGISTRY)
CONSUMER_LAG = Gauge("tom_consumer_lag", "Signals not yet delivered to a consumer", registry=REGISTRY)
CONSUMER_PENDING = Gauge("tom_consumer_pending", "Signals delivered but not yet acknowledged", registry=REGISTRY)
SIGNALS_REJECTED = Counter("tom_api_signals_rejected", "Signals refused by POST /signals", registry=REGISTRY)


def observe_store(report: dict[str, Any]) -> None:
    ORDERS_BY_STATE.clear()
    for state, count in report["states"].items():
        ORDERS_BY_STATE.labels(state=state).set(count)
    FILL_RATE.set(report["fill_rate"] or 0)
    SUCCESS_RATE.set(report["success_rate"] or 0)
    FEES.set(report["fees"] or 0)
    DEAD_LETTERS.set(report["dead_letters"])
    for row in report["exchanges"]:
        ORDERS_BY_EXCHANGE.labels(exchange=row["exchange"]).set(row["orders"])
        SLIPPAGE.labels(exchange=row["exchange"]).set(row["avg_slippage_bps"] or 0)
        LATENCY.labels(exchange=row["exchange"], quantile="0.5").set(row["submit_to_fill_p50_ms"] or 0)
        LATENCY.labels(exchange=row["exchange"], quantile="0.99").set(row["submit_to_fill_p99_ms"] or 0)


def render() -> bytes:
    return generate_latest(REGISTRY)
