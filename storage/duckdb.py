"""Order storage on DuckDB (the local default), written only by the recorder (one read-write process).

Every write is an idempotent upsert by its natural key, so a batch delivered twice writes nothing
twice: `orders` by order_id (and only forward: an older snapshot never overwrites a newer one),
`order_events` by event_id, `fills` by fill_id, `dead_letters` by (source, message_id).
`positions` is a view over `fills`: net quantity and average cost per strategy and symbol.
"""
from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from oms.events import DeadLetter, OrderEvent
from oms.models import Fill, OrderSnapshot
from storage import ORDER_FILTERS, analytics_view_statements, newest_per_order, summarize_report

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id VARCHAR PRIMARY KEY, signal_id VARCHAR, strategy_id VARCHAR, client_order_id VARCHAR,
    symbol VARCHAR, side VARCHAR, order_type VARCHAR, time_in_force VARCHAR, quantity DECIMAL(38, 12),
    limit_price DECIMAL(38, 12), state VARCHAR, filled_quantity DECIMAL(38, 12),
    average_fill_price DECIMAL(38, 12), fees DECIMAL(38, 12), exchange VARCHAR,
    reference_price DECIMAL(38, 12), slippage_bps DECIMAL(38, 4), reason VARCHAR,
    created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, version INTEGER, snapshot JSON
);
CREATE TABLE IF NOT EXISTS order_events (
    event_id VARCHAR PRIMARY KEY, order_id VARCHAR, state VARCHAR, "at" TIMESTAMPTZ, reason VARCHAR
);
CREATE TABLE IF NOT EXISTS fills (
    fill_id VARCHAR PRIMARY KEY, order_id VARCHAR, strategy_id VARCHAR, symbol VARCHAR, side VARCHAR,
    quantity DECIMAL(38, 12), price DECIMAL(38, 12), fee DECIMAL(38, 12), fee_currency VARCHAR,
    liquidity VARCHAR, venue VARCHAR, "at" TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS dead_letters (
    source VARCHAR, message_id VARCHAR, payload VARCHAR, reason VARCHAR, "at" TIMESTAMPTZ,
    PRIMARY KEY (source, message_id)
);
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS payload_encoding VARCHAR DEFAULT 'utf-8';
CREATE OR REPLACE VIEW positions AS
SELECT strategy_id, symbol,
       SUM(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END) AS net_quantity,
       SUM(CASE WHEN side = 'buy' THEN quantity::DOUBLE * price::DOUBLE ELSE 0 END)
         / NULLIF(SUM(CASE WHEN side = 'buy' THEN quantity ELSE 0 END), 0) AS average_buy_price,
       SUM(CASE WHEN side = 'sell' THEN quantity::DOUBLE * price::DOUBLE ELSE 0 END)
         / NULLIF(SUM(CASE WHEN side = 'sell' THEN quantity ELSE 0 END), 0) AS average_sell_price,
       -- fees in the quote currency (rebates negative): a fee charged in the base asset is valued at its
       -- fill's price; one in a third asset (BNB) has no price here and is left out, never added as quote
       SUM(CASE WHEN fee_currency IS NULL OR fee_currency = split_part(symbol, '/', 2) THEN fee
                WHEN fee_currency = split_part(symbol, '/', 1) THEN fee * price END) AS fees,
       COUNT(*) AS fills
FROM fills GROUP BY strategy_id, symbol;
"""

# Errors a row causes by itself (a value the column cannot hold, a malformed field): writing it again
# will fail again, so the recorder sets that entry aside instead of retrying the batch forever.
ROW_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException, ValueError, TypeError,
              OverflowError)

_ORDER_COLUMNS = ("order_id", "signal_id", "strategy_id", "client_order_id", "symbol", "side", "order_type",
                  "time_in_force", "quantity", "limit_price", "state", "filled_quantity", "average_fill_price",
                  "fees", "exchange", "reference_price", "slippage_bps", "reason", "created_at", "updated_at")


class DuckDBStore:
    """One connection, one writer process; calls are serialized by a lock (DuckDB is in-process)."""

    row_errors = ROW_ERRORS

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = duckdb.connect(str(path), read_only=read_only)
        self._lock = threading.Lock()
        if not read_only:
            self._db.execute(SCHEMA)
            self._create_views()

    def _create_views(self) -> None:
        for statement in analytics_view_statements("duckdb"):
            self._db.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1").fetchone() == (1,)

    # --- writes (recorder) ----------------------------------------------------------------------
    def record(self, events: list[OrderEvent], fills: list[Fill], dead: list[DeadLetter]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._upsert_orders([e.snapshot for e in events])
                if events:
                    self._db.executemany(
                        "INSERT INTO order_events VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [(e.event_id, e.order_id, e.state.value, e.at, e.reason) for e in events])
                if fills:
                    self._db.executemany(
                        "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [(f.fill_id, f.order_id, f.strategy_id, f.symbol, f.side.value, f.quantity, f.price, f.fee,
                          f.fee_currency, f.liquidity, f.venue, f.at) for f in fills])
                if dead:
                    self._db.executemany(
                        "INSERT INTO dead_letters (source, message_id, payload, reason, \"at\", payload_encoding) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        [(d.source, d.message_id, d.payload, d.reason, d.at, d.payload_encoding) for d in dead])
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise

    def _upsert_orders(self, snapshots: list[OrderSnapshot]) -> None:
        latest = newest_per_order(snapshots)
        if not latest:
            return
        placeholders = ", ".join("?" * (len(_ORDER_COLUMNS) + 2))
        updates = ", ".join(f"{c} = excluded.{c}" for c in (*_ORDER_COLUMNS[1:], "version", "snapshot"))
        self._db.executemany(
            f"INSERT INTO orders VALUES ({placeholders}) ON CONFLICT (order_id) DO UPDATE SET {updates} "
            "WHERE excluded.version >= orders.version",
            [self._order_row(s) for s in latest.values()])

    @staticmethod
    def _order_row(snap: OrderSnapshot) -> list[Any]:
        data = snap.model_dump()
        row = [data[c].value if hasattr(data[c], "value") else data[c] for c in _ORDER_COLUMNS]
        return [*row, len(snap.transitions), snap.model_dump_json()]

    # --- reads (API, report) --------------------------------------------------------------------
    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def list_orders(self, filters: dict[str, str | None], limit: int, offset: int) -> tuple[list[OrderSnapshot], int]:
        where, params = [], []
        for column in ORDER_FILTERS:
            if filters.get(column):
                where.append(f"{column} = ?")
                params.append(filters[column])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._rows(f"SELECT COUNT(*) AS n FROM orders {clause}", params)[0]["n"]
        rows = self._rows(f"SELECT snapshot FROM orders {clause} ORDER BY created_at DESC, order_id "
                          "LIMIT ? OFFSET ?", [*params, limit, offset])
        return [OrderSnapshot.model_validate_json(r["snapshot"]) for r in rows], total

    def get_order(self, order_id: str) -> OrderSnapshot | None:
        rows = self._rows("SELECT snapshot FROM orders WHERE order_id = ?", [order_id])
        return OrderSnapshot.model_validate_json(rows[0]["snapshot"]) if rows else None

    def order_snapshots(self, since: datetime | None = None, until: datetime | None = None) -> list[OrderSnapshot]:
        """Orders created in [since, until), for the report (analytics/report.py)."""
        bounds = [(c, v) for c, v in (("created_at >= ?", since), ("created_at < ?", until)) if v is not None]
        clause = f"WHERE {' AND '.join(c for c, _ in bounds)}" if bounds else ""
        rows = self._rows(f"SELECT snapshot FROM orders {clause} ORDER BY created_at, order_id", [v for _, v in bounds])
        return [OrderSnapshot.model_validate_json(r["snapshot"]) for r in rows]

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """A read-only query of the report's views (tests compare them with analytics/metrics.py)."""
        return self._rows(sql)

    def positions(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM positions ORDER BY strategy_id, symbol")

    def fills(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM fills ORDER BY \"at\", fill_id")

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM dead_letters ORDER BY \"at\"")

    def counts(self) -> dict[str, int]:
        rows = self._rows("SELECT state, COUNT(*) AS n FROM orders GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def report(self) -> dict[str, Any]:
        """Execution quality: fill rates, success rate, latency, slippage, fees, per exchange."""
        rows = self._rows("""
            WITH first_fill AS (SELECT order_id, MIN("at") AS "at" FROM fills GROUP BY order_id),
                 submitted AS (SELECT order_id, MIN("at") AS "at" FROM order_events WHERE state = 'submitted'
                               GROUP BY order_id)
            SELECT o.exchange,
                   COUNT(*) AS orders,
                   COUNT(*) FILTER (WHERE o.state = 'filled') AS filled,
                   COUNT(*) FILTER (WHERE o.filled_quantity > 0) AS with_fills,
                   COUNT(*) FILTER (WHERE o.state IN ('denied', 'rejected', 'failed')) AS refused,
                   COUNT(*) FILTER (WHERE o.state IN ('filled','cancelled','denied','rejected','expired','failed'))
                       AS terminal,
                   SUM(o.filled_quantity) / NULLIF(SUM(o.quantity), 0) AS fill_ratio,
                   AVG(o.slippage_bps) AS avg_slippage_bps,
                   SUM(o.fees) AS fees,
                   SUM(o.filled_quantity::DOUBLE * o.average_fill_price::DOUBLE) AS notional,
                   quantile_cont(epoch(f."at") - epoch(s."at"), 0.5) * 1000 AS submit_to_fill_p50_ms,
                   quantile_cont(epoch(f."at") - epoch(s."at"), 0.99) * 1000 AS submit_to_fill_p99_ms
            FROM orders o LEFT JOIN first_fill f USING (order_id) LEFT JOIN submitted s USING (order_id)
            GROUP BY o.exchange ORDER BY o.exchange
        """)
        dead = self._rows("SELECT COUNT(*) AS n FROM dead_letters")[0]["n"]
        return summarize_report(rows, self.counts(), dead)
