"""Order storage: one interface, DuckDB locally and BigQuery on GKE behind it.

The recorder (workers/recorder.py) is the writer; the API and `tom report` read. Every write is
idempotent by the item's natural key (event_id, fill_id, (source, message_id)), so a batch written
twice, by a retried round or by two replicas racing, reads back once; the current order is the
newest snapshot by version (its number of transitions), never an older one that arrives late.
`open_storage(settings)` picks the backend from `database.type`.
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from oms.events import DeadLetter, OrderEvent
from oms.models import Fill, OrderSnapshot

if TYPE_CHECKING:
    from config.settings import Settings

ORDER_FILTERS = ("state", "symbol", "strategy_id", "exchange")


@runtime_checkable
class OrderStore(Protocol):
    """What the recorder, the API and `tom report` need from the database."""

    # Exceptions a row causes by itself (a value a column cannot hold): the recorder writes the batch
    # one item at a time and sets aside those that raise one of these, instead of retrying forever.
    row_errors: tuple[type[BaseException], ...]

    def ping(self) -> bool: ...
    def close(self) -> None: ...
    def record(self, events: list[OrderEvent], fills: list[Fill], dead: list[DeadLetter]) -> None: ...
    def list_orders(self, filters: dict[str, str | None], limit: int,
                    offset: int) -> tuple[list[OrderSnapshot], int]: ...
    def get_order(self, order_id: str) -> OrderSnapshot | None: ...
    def order_snapshots(self, since: datetime | None = None,
                        until: datetime | None = None) -> list[OrderSnapshot]: ...
    def rows(self, sql: str) -> list[dict[str, Any]]: ...
    def positions(self) -> list[dict[str, Any]]: ...
    def fills(self) -> list[dict[str, Any]]: ...
    def dead_letters(self) -> list[dict[str, Any]]: ...
    def counts(self) -> dict[str, int]: ...
    def report(self) -> dict[str, Any]: ...


def open_storage(settings: "Settings", read_only: bool = False) -> OrderStore:
    """The configured backend, its tables (and views) created if missing unless read_only."""
    db = settings.database
    if db.type == "bigquery":
        from storage.bigquery import BigQueryStore
        return BigQueryStore(project=db.project, dataset=db.dataset, location=db.location,
                             endpoint=db.emulator_host, read_only=read_only)
    from storage.duckdb import DuckDBStore
    return DuckDBStore(db.path, read_only=read_only)


def analytics_view_statements(dialect: str, dataset: str | None = None) -> list[str]:
    """The report's views (analytics/views.py) for a backend: `duckdb`, or `bigquery` with its
    `project.dataset`. Each backend runs them in one place, after its own tables (its `_create_views`)."""
    from analytics.views import view_statements

    return list(view_statements(dialect, dataset))


def decode_dead_letter(fields: dict[str, str]) -> DeadLetter:
    return DeadLetter(payload=fields.get("payload", ""), reason=fields.get("reason", ""),
                      payload_encoding=fields.get("payload_encoding") or "utf-8",
                      source=fields.get("source", "signals"), message_id=fields.get("message_id"),
                      at=fields.get("at") or "1970-01-01T00:00:00Z")


def newest_per_order(snapshots: list[OrderSnapshot]) -> dict[str, OrderSnapshot]:
    """Within one batch, the newest snapshot of each order (most transitions; a tie goes to the later)."""
    latest: dict[str, OrderSnapshot] = {}
    for snap in snapshots:
        if snap.order_id not in latest or len(snap.transitions) >= len(latest[snap.order_id].transitions):
            latest[snap.order_id] = snap
    return latest


def summarize_report(rows: list[dict[str, Any]], states: dict[str, int], dead_letters: int) -> dict[str, Any]:
    """The report document (`GET /report`, `tom report --json`) from its per-exchange rows."""
    exchanges = [{k: (float(v) if v is not None and not isinstance(v, (str, int)) else v) for k, v in r.items()}
                 for r in rows]
    total = sum(r["orders"] for r in exchanges)
    filled = sum(r["filled"] for r in exchanges)
    refused = sum(r["refused"] for r in exchanges)
    fees = sum(r["fees"] or 0 for r in exchanges)
    notional = sum(r["notional"] or 0 for r in exchanges)
    return {
        "orders": total,
        "states": states,
        "fill_rate": filled / total if total else None,
        "success_rate": (total - refused) / total if total else None,
        "fees": fees,
        "fee_bps_of_notional": fees / notional * 10_000 if notional else None,
        "exchanges": exchanges,
        "dead_letters": int(dead_letters),
    }
