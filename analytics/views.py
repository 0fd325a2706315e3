"""The report's definitions as SQL views, for DuckDB and BigQuery, from one source.

The storage backends create them by calling `view_statements(dialect)` after their tables exist
(`storage/duckdb.py`; `storage/bigquery.py` passes its dataset). One template per view; the few places
the dialects differ are the functions of `Dialect` below, written side by side:

                DuckDB                                   BigQuery
  JSON field    json_extract_string(col, path)           JSON_VALUE(col, path)
  exact number  CAST(x AS DECIMAL(38, 12))               CAST(x AS BIGNUMERIC)
  quote         split_part(symbol, '/', 2)               SPLIT(symbol, '/')[SAFE_OFFSET(1)]
  parent id     regexp_extract(...) ('' if no match)     REGEXP_EXTRACT(...) (NULL if no match)
  percentile    quantile_cont(x, q) (interpolated)       APPROX_QUANTILES(x, 1000 IGNORE NULLS)[SAFE_OFFSET(q*1000)]
                                                         (BigQuery has no aggregate PERCENTILE_CONT:
                                                         approximate, close on large samples)

The rules are those of analytics/metrics.py (its docstring defines every figure); the per-order
money comes from the order's stored TCA (oms/tca.py), so both read the same numbers. A test runs
the DuckDB views against the pure functions on the same orders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from analytics.metrics import DIMENSIONS


@dataclass(frozen=True)
class Dialect:
    name: str
    json: Callable[[str, str], str]
    exact: Callable[[str], str]
    number: Callable[[str], str]
    quote: Callable[[str], str]
    parent_id: Callable[[str], str]
    children: Callable[[str], str]
    percentile: Callable[[str, float], str]


DUCKDB = Dialect(
    name="duckdb",
    json=lambda col, path: f"json_extract_string({col}, '{path}')",
    exact=lambda x: f"CAST({x} AS DECIMAL(38, 12))",
    number=lambda x: f"CAST({x} AS DOUBLE)",
    quote=lambda symbol: f"split_part({symbol}, '/', 2)",
    parent_id=lambda col: f"NULLIF(regexp_extract({col}, '^(.*)-c[0-9]+$', 1), '')",
    children=lambda col: f"COALESCE(json_array_length(json_extract({col}, '$.children')), 0)",
    percentile=lambda x, q: f"quantile_cont({x}, {q})",
)

BIGQUERY = Dialect(
    name="bigquery",
    json=lambda col, path: f"JSON_VALUE({col}, '{path}')",
    exact=lambda x: f"CAST({x} AS BIGNUMERIC)",
    number=lambda x: f"CAST({x} AS FLOAT64)",
    quote=lambda symbol: f"SPLIT({symbol}, '/')[SAFE_OFFSET(1)]",
    parent_id=lambda col: f"REGEXP_EXTRACT({col}, r'^(.*)-c[0-9]+$')",
    children=lambda col: f"COALESCE(ARRAY_LENGTH(JSON_QUERY_ARRAY({col}, '$.children')), 0)",
    percentile=lambda x, q: f"APPROX_QUANTILES({x}, 1000 IGNORE NULLS)[SAFE_OFFSET({int(q * 1000)})]",
)

DIALECTS = {"duckdb": DUCKDB, "bigquery": BIGQUERY}
TERMINAL_SQL = "('filled', 'cancelled', 'denied', 'rejected', 'expired', 'failed')"
ANSWER_SQL = "('accepted', 'partially_filled', 'filled', 'rejected', 'cancelled', 'expired')"


def _orders_view(d: Dialect, t: Callable[[str], str]) -> str:
    def tca(field: str, alias: str = "o") -> str:
        return d.exact(d.json(f"{alias}.snapshot", f"$.tca.{field}"))

    def event(condition: str) -> str:
        return (f"EXISTS (SELECT 1 FROM {t('order_events')} e WHERE e.order_id = o.order_id AND {condition})")

    price = f"COALESCE({tca('arrival_price')}, {tca('decision_price')}, o.limit_price)"
    sent = event("e.state = 'submitted'")
    return f"""
CREATE OR REPLACE VIEW {t('tca_orders')} AS
SELECT o.order_id,
       p.order_id AS parent_id,
       ({d.children('o.snapshot')} > 0
        OR EXISTS (SELECT 1 FROM {t('orders')} c WHERE {d.parent_id('c.order_id')} = o.order_id)) AS is_parent,
       o.exchange AS venue, o.symbol, {d.quote('o.symbol')} AS quote_currency, o.strategy_id AS strategy,
       COALESCE({d.json('o.snapshot', '$.tca.algorithm')}, {d.json('p.snapshot', '$.tca.algorithm')}, 'none')
           AS algorithm,
       SUBSTR({d.json('o.snapshot', '$.created_at')}, 1, 10) AS day,
       CASE WHEN {price} IS NULL THEN 'unpriced'
            WHEN o.quantity * {price} < 1000 THEN '<1k'
            WHEN o.quantity * {price} < 10000 THEN '1k-10k'
            WHEN o.quantity * {price} < 100000 THEN '10k-100k'
            ELSE '>=100k' END AS size_bucket,
       o.state,
       CASE WHEN o.state IN ('filled', 'cancelled', 'expired') THEN 'success'
            WHEN o.state IN ('denied', 'rejected') THEN 'refused'
            WHEN o.state = 'failed' THEN 'failed'
            WHEN o.state = 'unknown' THEN 'unknown'
            ELSE 'open' END AS outcome,
       o.quantity,
       o.filled_quantity / o.quantity AS fill_ratio,
       COALESCE({tca('notional')}, 0) AS notional,
       o.fees,
       {tca('estimated_fee')} AS estimated_fee,
       {tca('arrival_slippage')} AS arrival_slippage,
       {tca('arrival_slippage_bps')} AS arrival_slippage_bps,
       {tca('estimated_slippage_bps')} AS estimated_slippage_bps,
       {tca('shortfall.total')} AS shortfall,
       {d.number(d.json('o.snapshot', '$.tca.latency.execution_ms'))} AS execution_ms,
       {d.number(d.json('o.snapshot', '$.tca.latency.sent_to_ack_ms'))} AS ack_ms,
       {sent} AS sent,
       ({sent} AND {event(f"e.state IN {ANSWER_SQL}")}) AS acked,
       o.state = 'rejected' AS rejected,
       {event("(LOWER(e.reason) LIKE '%timeout%' OR LOWER(e.reason) LIKE '%timed out%')")} AS timed_out,
       {event("e.state = 'unknown'")} AS went_unknown,
       {event("LOWER(e.reason) LIKE '%circuit%'")} AS circuit_open
FROM {t('orders')} o
LEFT JOIN {t('orders')} p ON p.order_id = {d.parent_id('o.order_id')}
"""


def _count(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _group_view(d: Dialect, t: Callable[[str], str], dimension: str) -> str:
    decided = "outcome IN ('success', 'refused', 'failed', 'unknown')"
    return f"""
CREATE OR REPLACE VIEW {t(f'tca_by_{dimension}')} AS
SELECT {dimension} AS key, quote_currency,
       COUNT(*) AS orders,
       {_count("outcome = 'success'")} AS n_success, {_count("outcome = 'refused'")} AS n_refused,
       {_count("outcome = 'failed'")} AS n_failed, {_count("outcome = 'unknown'")} AS n_unknown,
       {_count("outcome = 'open'")} AS n_open,
       {_count("outcome = 'success'")} / NULLIF({_count(decided)}, 0) AS success_rate,
       AVG(CASE WHEN sent AND state IN {TERMINAL_SQL} THEN fill_ratio END) AS fill_rate,
       AVG(execution_ms) AS execution_ms_avg,
       {d.percentile('execution_ms', 0.5)} AS execution_ms_p50,
       {d.percentile('execution_ms', 0.99)} AS execution_ms_p99,
       SUM(notional) AS notional, SUM(fees) AS fees,
       COALESCE(SUM(arrival_slippage), 0) AS slippage,
       SUM(arrival_slippage) * 10000
           / NULLIF(SUM(CASE WHEN arrival_slippage IS NOT NULL THEN notional END), 0) AS slippage_bps,
       COALESCE(SUM(arrival_slippage), 0) - SUM(fees) AS total_cost,
       COALESCE(SUM(shortfall), 0) AS shortfall
FROM {t('tca_orders')}
WHERE NOT is_parent
GROUP BY {dimension}, quote_currency
"""


def _venue_view(d: Dialect, t: Callable[[str], str]) -> str:
    return f"""
CREATE OR REPLACE VIEW {t('tca_venue_performance')} AS
SELECT venue, COUNT(*) AS orders, {_count('sent')} AS sent,
       {d.percentile('CASE WHEN sent THEN ack_ms END', 0.5)} AS ack_ms_p50,
       {d.percentile('CASE WHEN sent THEN ack_ms END', 0.99)} AS ack_ms_p99,
       {_count('sent AND rejected')} / NULLIF({_count('sent')}, 0) AS reject_rate,
       {_count('sent AND timed_out')} / NULLIF({_count('sent')}, 0) AS timeout_rate,
       {_count('sent AND went_unknown')} / NULLIF({_count('sent')}, 0) AS unknown_rate,
       {_count('circuit_open')} / COUNT(*) AS circuit_open_rate,
       {_count('acked')} / NULLIF({_count('sent')}, 0) AS uptime
FROM {t('tca_orders')}
WHERE NOT is_parent
GROUP BY venue
"""


def view_statements(dialect: str, dataset: str | None = None) -> list[str]:
    """CREATE OR REPLACE VIEW statements, in dependency order. BigQuery names its dataset
    (`project.dataset`): its views must name their tables in full."""
    d = DIALECTS[dialect]
    if dialect == "bigquery":
        if not dataset:
            raise ValueError("BigQuery views need the dataset that holds the tables")

        def t(name: str) -> str:
            return f"`{dataset}.{name}`"
    else:
        def t(name: str) -> str:
            return name
    return [_orders_view(d, t), *(_group_view(d, t, dim) for dim in DIMENSIONS), _venue_view(d, t)]
