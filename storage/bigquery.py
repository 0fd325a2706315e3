"""Order storage on BigQuery (`database.type: bigquery`), with the real google-cloud-bigquery client.

Layout, in `database.project`.`database.dataset` (created if missing, with the tables and views):
- `order_events`: append-only, one row per transition keyed by event_id (`<order_id>:<sequence>`),
  carrying the order's snapshot after it (typed columns plus the exact JSON). Day partitions on `at`,
  clustered by order_id.
- `fills` keyed by fill_id (day partitions on `at`, clustered by strategy_id, symbol), `dead_letters`
  keyed by dead_letter_id = `<source>:<message_id>` (day partitions on `at`, clustered by source).
- `orders`: a view, the newest event per order (most transitions; ties by updated_at, then `at`), so
  an older snapshot arriving late never wins and no UPDATE ever runs on a table.
- `positions`: a view over the distinct fills.

Writes: each recorder batch is at most one insert-only MERGE per table (`WHEN NOT MATCHED THEN
INSERT`), so a batch written again by a retried round inserts nothing. The recorder writes its batches
one after another, so each replica has at most one DML statement per table in flight: well under
BigQuery's 2 running + 20 queued per table. Two replicas racing on the same item may both insert it
(insert-only MERGEs do not serialize), so every read takes one row per key (QUALIFY ROW_NUMBER()).
Amounts are NUMERIC (9 decimals; BIGNUMERIC is not in the local emulator), rounded half-even; the
snapshot and fill JSON keep the exact values, and the API reads those.
"""
from __future__ import annotations

import decimal
import hashlib
import threading
from datetime import datetime
from decimal import Decimal
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery as bq
from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY

from oms.events import DeadLetter, OrderEvent
from oms.models import Fill, OrderSnapshot
from storage import ORDER_FILTERS, analytics_view_statements, newest_per_order, summarize_report

TIMEOUT_S = 30.0
# The client's defaults keep retrying an API call for 10 minutes and a failed query job (rate limits,
# backend errors) for 40: the recorder would sit on one batch that long. Bounded here; the recorder
# retries the batch with its own backoff, and re-running a write is harmless (insert-only MERGE).
RETRY = bq.DEFAULT_RETRY.with_deadline(TIMEOUT_S)
JOB_RETRY = DEFAULT_JOB_RETRY.with_deadline(2 * TIMEOUT_S)
NUMERIC_PLACES = Decimal("1e-9")
VIEWS_LABEL = "tom_views"

# (name, type, mode); `at` is quoted in SQL (a keyword of the emulator's DuckDB dialect).
_SNAPSHOT_FIELDS = [
    ("signal_id", "STRING", "NULLABLE"), ("strategy_id", "STRING", "NULLABLE"),
    ("client_order_id", "STRING", "NULLABLE"), ("symbol", "STRING", "NULLABLE"), ("side", "STRING", "NULLABLE"),
    ("order_type", "STRING", "NULLABLE"), ("time_in_force", "STRING", "NULLABLE"),
    ("quantity", "NUMERIC", "NULLABLE"), ("limit_price", "NUMERIC", "NULLABLE"), ("order_state", "STRING", "NULLABLE"),
    ("filled_quantity", "NUMERIC", "NULLABLE"), ("average_fill_price", "NUMERIC", "NULLABLE"),
    ("fees", "NUMERIC", "NULLABLE"), ("exchange", "STRING", "NULLABLE"), ("reference_price", "NUMERIC", "NULLABLE"),
    ("slippage_bps", "NUMERIC", "NULLABLE"), ("order_reason", "STRING", "NULLABLE"),
    ("created_at", "TIMESTAMP", "NULLABLE"), ("updated_at", "TIMESTAMP", "NULLABLE"),
]
TABLES: dict[str, dict[str, Any]] = {
    "order_events": {
        "key": "event_id", "cluster": ["order_id"],
        "fields": [("event_id", "STRING", "REQUIRED"), ("order_id", "STRING", "REQUIRED"),
                   ("sequence", "INT64", "NULLABLE"), ("version", "INT64", "REQUIRED"),
                   ("state", "STRING", "REQUIRED"), ("reason", "STRING", "NULLABLE"),
                   ("at", "TIMESTAMP", "REQUIRED"), *_SNAPSHOT_FIELDS, ("snapshot", "STRING", "REQUIRED")],
    },
    "fills": {
        "key": "fill_id", "cluster": ["strategy_id", "symbol"],
        "fields": [("fill_id", "STRING", "REQUIRED"), ("order_id", "STRING", "REQUIRED"),
                   ("strategy_id", "STRING", "NULLABLE"), ("symbol", "STRING", "NULLABLE"),
                   ("side", "STRING", "NULLABLE"), ("quantity", "NUMERIC", "NULLABLE"),
                   ("price", "NUMERIC", "NULLABLE"), ("fee", "NUMERIC", "NULLABLE"),
                   ("fee_currency", "STRING", "NULLABLE"), ("liquidity", "STRING", "NULLABLE"),
                   ("venue", "STRING", "NULLABLE"), ("at", "TIMESTAMP", "REQUIRED"), ("fill", "STRING", "REQUIRED")],
    },
    "dead_letters": {
        "key": "dead_letter_id", "cluster": ["source"],
        "fields": [("dead_letter_id", "STRING", "REQUIRED"), ("source", "STRING", "NULLABLE"),
                   ("message_id", "STRING", "NULLABLE"), ("payload", "STRING", "NULLABLE"),
                   ("reason", "STRING", "NULLABLE"), ("at", "TIMESTAMP", "REQUIRED"),
                   ("payload_encoding", "STRING", "NULLABLE")],
    },
}
# The snapshot's own state and reason are order_state and order_reason in order_events (whose state
# and reason are the transition's, as in DuckDB); the orders view names them back.
_SNAPSHOT_AS = {"order_state": "state", "order_reason": "reason"}
_ORDER_COLUMNS = ("order_id", *(name for name, _, _ in _SNAPSHOT_FIELDS))


def _q(name: str) -> str:
    return f"`{name}`"


class BigQueryStore:
    """The BigQuery backend; thread-safe (the recorder writes from a thread, the API reads from others)."""

    # BadRequest: BigQuery refused the statement for a value in it (the recorder then writes the batch
    # item by item and sets aside only what is refused again); the rest fail in Python before sending.
    row_errors = (gexc.BadRequest, ValueError, TypeError, OverflowError, decimal.InvalidOperation)

    def __init__(self, project: str, dataset: str, location: str | None = None, endpoint: str | None = None,
                 read_only: bool = False) -> None:
        if endpoint:  # a local emulator: no Google credentials
            self._client = bq.Client(project=project, location=location, credentials=AnonymousCredentials(),
                                     client_options=ClientOptions(api_endpoint=endpoint))
        else:  # Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS or Workload Identity
            self._client = bq.Client(project=project, location=location)
        self._project, self._dataset, self._location = project, dataset, location
        self._read_only = read_only
        self._ready = read_only  # tables and views exist (created on first use, so opening never blocks)
        self._ready_lock = threading.Lock()

    def _t(self, table: str) -> str:
        return f"`{self._project}.{self._dataset}.{table}`"

    def close(self) -> None:
        self._client.close()

    # --- schema ---------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            dataset = bq.Dataset(f"{self._project}.{self._dataset}")
            if self._location:
                dataset.location = self._location
            dataset = self._client.create_dataset(dataset, exists_ok=True, retry=RETRY, timeout=TIMEOUT_S)
            for name, spec in TABLES.items():
                table = bq.Table(f"{self._project}.{self._dataset}.{name}",
                                 schema=[bq.SchemaField(n, t, mode=m) for n, t, m in spec["fields"]])
                table.time_partitioning = bq.TimePartitioning(type_=bq.TimePartitioningType.DAY, field="at")
                table.clustering_fields = spec["cluster"]
                self._client.create_table(table, exists_ok=True, retry=RETRY, timeout=TIMEOUT_S)
            self._create_views(dataset)
            self._ready = True

    def _create_views(self, dataset: bq.Dataset) -> None:
        """(Re)create the views when their definitions changed: the dataset's label `tom_views` holds the
        fingerprint of the last set created, so a restart or another replica does not redo them all."""
        config = bq.QueryJobConfig(default_dataset=f"{self._project}.{self._dataset}")
        own = self._view_statements()
        analytics = analytics_view_statements("bigquery", f"{self._project}.{self._dataset}")
        fingerprint = hashlib.sha256("\0".join([*own, *analytics]).encode()).hexdigest()[:32]
        if (dataset.labels or {}).get(VIEWS_LABEL) == fingerprint:
            return
        for statement in own:
            self._query(statement, config)
        if analytics:  # one script, one job: in order (they build on each other), half the time of one job each
            self._query(";\n".join(s.strip().rstrip(";") for s in analytics), config)
        dataset.labels = {**(dataset.labels or {}), VIEWS_LABEL: fingerprint}
        self._client.update_dataset(dataset, ["labels"], retry=RETRY, timeout=TIMEOUT_S)

    def _view_statements(self) -> list[str]:
        return [
            f"""CREATE OR REPLACE VIEW {self._t('orders')} AS
                SELECT {', '.join(f"{_q(c)} AS {_q(_SNAPSHOT_AS.get(c, c))}" for c in _ORDER_COLUMNS)}, version, snapshot
                FROM {self._t('order_events')} WHERE TRUE
                QUALIFY ROW_NUMBER() OVER (PARTITION BY order_id
                                           ORDER BY version DESC, updated_at DESC, `at` DESC, event_id DESC) = 1""",
            f"""CREATE OR REPLACE VIEW {self._t('positions')} AS
                SELECT strategy_id, symbol,
                       SUM(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) AS net_quantity,
                       SUM(CASE WHEN side = 'buy' THEN CAST(quantity AS FLOAT64) * CAST(price AS FLOAT64) ELSE 0 END)
                         / NULLIF(SUM(CASE WHEN side = 'buy' THEN CAST(quantity AS FLOAT64) ELSE 0 END), 0)
                         AS average_buy_price,
                       SUM(CASE WHEN side = 'sell' THEN CAST(quantity AS FLOAT64) * CAST(price AS FLOAT64) ELSE 0 END)
                         / NULLIF(SUM(CASE WHEN side = 'sell' THEN CAST(quantity AS FLOAT64) ELSE 0 END), 0)
                         AS average_sell_price,
                       -- fees in the quote currency; a base-asset fee valued at its fill's price; a third
                       -- asset's fee (BNB) has no price here and is left out, never added as quote
                       SUM(CASE WHEN fee_currency IS NULL OR fee_currency = SPLIT(symbol, '/')[SAFE_OFFSET(1)] THEN fee
                                WHEN fee_currency = SPLIT(symbol, '/')[SAFE_OFFSET(0)] THEN fee * price END) AS fees,
                       COUNT(*) AS fills
                FROM ({self._distinct('fills')}) GROUP BY strategy_id, symbol""",
        ]

    def _distinct(self, table: str) -> str:
        """One row per key: replicas racing on one item may both have inserted it."""
        key = TABLES[table]["key"]
        return f"SELECT * FROM {self._t(table)} WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY {key}) = 1"

    # --- writes (recorder) ----------------------------------------------------------------------
    def record(self, events: list[OrderEvent], fills: list[Fill], dead: list[DeadLetter]) -> None:
        if self._read_only:
            raise RuntimeError("this BigQuery store was opened read-only")
        self.ensure_schema()
        # Within a batch every event of an order carries the order's newest snapshot, as DuckDB keeps it.
        latest = newest_per_order([e.snapshot for e in events])
        self._insert_missing("order_events", [_event_row(e, latest[e.order_id]) for e in events])
        self._insert_missing("fills", [_fill_row(f) for f in fills])
        self._insert_missing("dead_letters", [_dead_row(d) for d in dead])

    def _insert_missing(self, table: str, rows: list[dict[str, Any]]) -> None:
        """One insert-only MERGE: rows whose key is already there are left alone."""
        unique = list({row[TABLES[table]["key"]]: row for row in rows}.values())
        if not unique:
            return
        fields = TABLES[table]["fields"]
        key = TABLES[table]["key"]
        row_type = bq.StructQueryParameterType(*(bq.ScalarQueryParameterType(t, name=n) for n, t, _ in fields))
        values = [bq.StructQueryParameter(None, *(bq.ScalarQueryParameter(n, t, row[n]) for n, t, _ in fields))
                  for row in unique]
        times = [row["at"] for row in unique]
        columns = ", ".join(_q(n) for n, _, _ in fields)
        # The partition column in the match lets BigQuery read only the days the batch touches.
        sql = (f"MERGE {self._t(table)} T USING UNNEST(@rows) S "
               f"ON T.{key} = S.{key} AND T.`at` BETWEEN @first AND @last "
               f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({', '.join('S.' + _q(n) for n, _, _ in fields)})")
        config = bq.QueryJobConfig(query_parameters=[
            bq.ArrayQueryParameter("rows", row_type, values),
            bq.ScalarQueryParameter("first", "TIMESTAMP", min(times)),
            bq.ScalarQueryParameter("last", "TIMESTAMP", max(times)),
        ])
        self._query(sql, config)

    def _query(self, sql: str, config: bq.QueryJobConfig) -> Any:
        job = self._client.query(sql, job_config=config, retry=RETRY, job_retry=JOB_RETRY)
        return job.result(timeout=2 * TIMEOUT_S)

    # --- reads (API, report) --------------------------------------------------------------------
    def _rows(self, sql: str, params: list | None = None) -> list[dict[str, Any]]:
        self.ensure_schema()
        return [dict(row.items()) for row in self._query(sql, bq.QueryJobConfig(query_parameters=params or []))]

    def ping(self) -> bool:
        self.ensure_schema()
        self._client.get_table(f"{self._project}.{self._dataset}.order_events", retry=RETRY, timeout=TIMEOUT_S)
        return True

    def list_orders(self, filters: dict[str, str | None], limit: int, offset: int) -> tuple[list[OrderSnapshot], int]:
        where, params = [], []
        for column in ORDER_FILTERS:
            if filters.get(column):
                where.append(f"{column} = @{column}")
                params.append(bq.ScalarQueryParameter(column, "STRING", filters[column]))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._rows(f"SELECT COUNT(*) AS n FROM {self._t('orders')} {clause}", params)[0]["n"]
        page = [bq.ScalarQueryParameter("limit", "INT64", limit), bq.ScalarQueryParameter("offset", "INT64", offset)]
        rows = self._rows(f"SELECT snapshot FROM {self._t('orders')} {clause} "
                          "ORDER BY created_at DESC, order_id LIMIT @limit OFFSET @offset", [*params, *page])
        return [OrderSnapshot.model_validate_json(r["snapshot"]) for r in rows], int(total)

    def get_order(self, order_id: str) -> OrderSnapshot | None:
        rows = self._rows(f"SELECT snapshot FROM {self._t('orders')} WHERE order_id = @id",
                          [bq.ScalarQueryParameter("id", "STRING", order_id)])
        return OrderSnapshot.model_validate_json(rows[0]["snapshot"]) if rows else None

    def order_snapshots(self, since: datetime | None = None, until: datetime | None = None) -> list[OrderSnapshot]:
        """Orders created in [since, until), for the report (analytics/report.py)."""
        bounds = [(f"created_at {op} @{name}", bq.ScalarQueryParameter(name, "TIMESTAMP", value))
                  for op, name, value in ((">=", "since", since), ("<", "until", until)) if value is not None]
        clause = f"WHERE {' AND '.join(c for c, _ in bounds)}" if bounds else ""
        rows = self._rows(f"SELECT snapshot FROM {self._t('orders')} {clause} ORDER BY created_at, order_id",
                          [p for _, p in bounds])
        return [OrderSnapshot.model_validate_json(r["snapshot"]) for r in rows]

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """A read-only query; unqualified names are this dataset's tables and views."""
        config = bq.QueryJobConfig(default_dataset=f"{self._project}.{self._dataset}")
        self.ensure_schema()
        return [dict(row.items()) for row in self._query(sql, config)]

    def positions(self) -> list[dict[str, Any]]:
        return self._rows(f"SELECT * FROM {self._t('positions')} ORDER BY strategy_id, symbol")

    def fills(self) -> list[dict[str, Any]]:
        rows = self._rows(f"SELECT fill FROM ({self._distinct('fills')}) ORDER BY `at`, fill_id")
        return [_fill_dict(r["fill"]) for r in rows]

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._rows(f"SELECT * EXCEPT (dead_letter_id) FROM ({self._distinct('dead_letters')}) ORDER BY `at`")

    def counts(self) -> dict[str, int]:
        rows = self._rows(f"SELECT state, COUNT(*) AS n FROM {self._t('orders')} GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def report(self) -> dict[str, Any]:
        """Execution quality per exchange; the same document as DuckDB's (storage.summarize_report)."""
        rows = self._rows(f"""
            WITH first_fill AS (SELECT order_id, MIN(`at`) AS `at` FROM {self._t('fills')} GROUP BY order_id),
                 submitted AS (SELECT order_id, MIN(`at`) AS `at` FROM {self._t('order_events')}
                               WHERE state = 'submitted' GROUP BY order_id),
                 base AS (SELECT o.*, (UNIX_MICROS(f.`at`) - UNIX_MICROS(s.`at`)) / 1000 AS latency_ms
                          FROM {self._t('orders')} o LEFT JOIN first_fill f USING (order_id)
                          LEFT JOIN submitted s USING (order_id)),
                 latency AS (SELECT exchange, ANY_VALUE(p50) AS p50, ANY_VALUE(p99) AS p99 FROM (
                               SELECT exchange, PERCENTILE_CONT(latency_ms, 0.5) OVER (PARTITION BY exchange) AS p50,
                                      PERCENTILE_CONT(latency_ms, 0.99) OVER (PARTITION BY exchange) AS p99
                               FROM base) GROUP BY exchange)
            SELECT b.exchange,
                   COUNT(*) AS orders,
                   COUNTIF(b.state = 'filled') AS filled,
                   COUNTIF(b.filled_quantity > 0) AS with_fills,
                   COUNTIF(b.state IN ('denied', 'rejected', 'failed')) AS refused,
                   COUNTIF(b.state IN ('filled', 'cancelled', 'denied', 'rejected', 'expired', 'failed')) AS terminal,
                   SUM(CAST(b.filled_quantity AS FLOAT64)) / NULLIF(SUM(CAST(b.quantity AS FLOAT64)), 0) AS fill_ratio,
                   AVG(CAST(b.slippage_bps AS FLOAT64)) AS avg_slippage_bps,
                   SUM(b.fees) AS fees,
                   SUM(CAST(b.filled_quantity AS FLOAT64) * CAST(b.average_fill_price AS FLOAT64)) AS notional,
                   ANY_VALUE(l.p50) AS submit_to_fill_p50_ms,
                   ANY_VALUE(l.p99) AS submit_to_fill_p99_ms
            FROM base b LEFT JOIN latency l USING (exchange)
            GROUP BY b.exchange ORDER BY b.exchange
        """)
        dead = self._rows(f"SELECT COUNT(DISTINCT dead_letter_id) AS n FROM {self._t('dead_letters')}")[0]["n"]
        return summarize_report(rows, self.counts(), dead)


# --- rows -----------------------------------------------------------------------------------------
def _numeric(value: Decimal | None) -> Decimal | None:
    if value is None:
        return None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    return value.quantize(NUMERIC_PLACES, rounding=decimal.ROUND_HALF_EVEN)


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


def _event_row(event: OrderEvent, snap: OrderSnapshot) -> dict[str, Any]:
    tail = event.event_id.rsplit(":", 1)[-1]
    row: dict[str, Any] = {
        "event_id": event.event_id, "order_id": event.order_id,
        "sequence": int(tail) if tail.isdigit() else None,  # None: an event the sweeper adds (orphans)
        "version": len(snap.transitions), "state": event.state.value, "reason": event.reason,
        "at": event.at, "snapshot": snap.model_dump_json(),
    }
    for name, kind, _ in _SNAPSHOT_FIELDS:
        value = _plain(getattr(snap, _SNAPSHOT_AS.get(name, name)))
        row[name] = _numeric(value) if kind == "NUMERIC" else value
    return row


def _fill_row(fill: Fill) -> dict[str, Any]:
    return {"fill_id": fill.fill_id, "order_id": fill.order_id, "strategy_id": fill.strategy_id,
            "symbol": fill.symbol, "side": fill.side.value, "quantity": _numeric(fill.quantity),
            "price": _numeric(fill.price), "fee": _numeric(fill.fee), "fee_currency": fill.fee_currency,
            "liquidity": fill.liquidity, "venue": fill.venue, "at": fill.at, "fill": fill.model_dump_json()}


def _dead_row(dead: DeadLetter) -> dict[str, Any]:
    if dead.message_id is not None:
        key = f"{dead.source}:{dead.message_id}"
    else:  # no message id (should not happen): the content is the identity
        digest = hashlib.sha256(f"{dead.payload}\0{dead.reason}\0{dead.at.isoformat()}".encode()).hexdigest()
        key = f"{dead.source}:sha256:{digest}"
    return {"dead_letter_id": key, "source": dead.source, "message_id": dead.message_id, "payload": dead.payload,
            "reason": dead.reason, "at": dead.at, "payload_encoding": dead.payload_encoding}


def _fill_dict(fill_json: str) -> dict[str, Any]:
    """A fill as DuckDB's rows have it, with the exact amounts its JSON keeps."""
    fill = Fill.model_validate_json(fill_json)
    return {**fill.model_dump(), "side": fill.side.value}
