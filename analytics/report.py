"""The execution report: one document for `tom report --json`, `GET /report` and the HTML report.

Built from the orders' snapshots (each carries its TCA, oms/tca.py) by the pure functions of
analytics/metrics.py, whose docstring defines every figure. Exact Decimals inside; `jsonable`
writes them as strings, as the rest of the API writes amounts, so the CLI and the API answer the
very same JSON. Money stays per quote currency.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from analytics.metrics import (
    DIMENSIONS,
    OrderRecord,
    aggregate,
    group_metrics,
    quantile,
    ratio,
    records,
    venue_performance,
)
from oms.models import OrderSnapshot
from oms.tca import BPS_QUANTUM, TERMINAL, LatencyStages, MarketPoint, parent_tca

CURRENCY_FREE = ("orders", "outcomes", "success_rate", "fill_rate", "execution_ms_avg", "execution_ms_p50",
                 "execution_ms_p99")
STAGES = tuple(f for f in LatencyStages.model_fields if f not in ("execution_ms", "total_ms"))


def latency_stages(snapshots: list[OrderSnapshot]) -> dict[str, dict[str, Any]]:
    out = {}
    for stage in STAGES:
        values = [getattr(s.tca.latency, stage) for s in snapshots if s.tca is not None]
        values = [v for v in values if v is not None]
        out[stage] = {"orders": len(values), "p50": quantile(values, Decimal("0.5")),
                      "p99": quantile(values, Decimal("0.99"))}
    return out


def observed_mid_paths(snapshots: list[OrderSnapshot]) -> dict[str, list[MarketPoint]]:
    """The market path as the platform saw it, per symbol, where no market data is given: the venue
    mid at each order's submission (its arrival price, read by the workflow when it sent the order),
    children's included. Enough for a parent's interval TWAP; no volume, so no VWAP."""
    out: dict[str, list[MarketPoint]] = {}
    for snap in snapshots:
        sent = next((t.at for t in snap.transitions if t.state.value == "submitted"), None)
        if snap.tca is not None and snap.tca.arrival_price is not None and sent is not None:
            out.setdefault(snap.symbol, []).append(MarketPoint(at=sent, price=snap.tca.arrival_price))
    return {symbol: sorted(points, key=lambda p: p.at) for symbol, points in out.items()}


def parents_section(snapshots: list[OrderSnapshot],
                    paths: dict[str, list[MarketPoint]] | None) -> list[dict[str, Any]]:
    rows = {r.order_id: r for r in records(snapshots)}
    paths = paths if paths is not None else observed_mid_paths(snapshots)
    out = []
    for parent in snapshots:
        if not rows[parent.order_id].is_parent:
            continue
        children = [s for s in snapshots if rows[s.order_id].parent_id == parent.order_id]
        tca = parent_tca(parent, children, (paths or {}).get(parent.symbol))
        out.append({
            "order_id": parent.order_id, "symbol": parent.symbol, "quote_currency": tca.order.quote_currency,
            "algorithm": rows[parent.order_id].algorithm, "children": tca.children,
            "fill_ratio": tca.order.fill_ratio, "average_fill_price": tca.order.average_fill_price,
            "notional": tca.order.notional, "fees": tca.order.fees,
            "arrival_slippage_bps": tca.order.arrival_slippage_bps,
            "shortfall_bps": tca.order.shortfall.total_bps if tca.order.shortfall else None,
            **tca.benchmarks.model_dump(),
        })
    return out


SLIPPAGE_EDGES = (Decimal(-100), Decimal(-50), Decimal(-20), Decimal(-10), Decimal(-5), Decimal(0), Decimal(5),
                  Decimal(10), Decimal(20), Decimal(50), Decimal(100))


def slippage_histogram(rows: list[OrderRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per venue: orders by arrival slippage (bps, P&L-signed) in fixed bins, open-ended at both ends."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.is_parent or r.arrival_slippage_bps is None:
            continue
        bins = out.setdefault(r.venue, [{"from": lo, "to": hi, "orders": 0} for lo, hi in
                                        zip((None, *SLIPPAGE_EDGES), (*SLIPPAGE_EDGES, None))])
        next(b for b in bins if b["to"] is None or r.arrival_slippage_bps < b["to"])["orders"] += 1
    return dict(sorted(out.items()))


def cost_breakdown(snapshots: list[OrderSnapshot], rows: list[OrderRecord]) -> list[dict[str, Any]]:
    """Per quote currency: the implementation shortfall's parts summed over venue orders."""
    sums: dict[str, dict[str, Decimal]] = {}
    for snap, r in zip(snapshots, rows):
        if r.is_parent or snap.tca is None or snap.tca.shortfall is None:
            continue
        parts = sums.setdefault(r.quote_currency, {k: Decimal(0) for k in ("delay", "execution", "fees",
                                                                             "opportunity", "total")})
        for k in parts:
            parts[k] += getattr(snap.tca.shortfall, k)
    return [{"quote_currency": q, **parts} for q, parts in sorted(sums.items())]


def fill_rate_by_hour(snapshots: list[OrderSnapshot], rows: list[OrderRecord]) -> list[dict[str, Any]]:
    hours: dict[str, list[Decimal]] = {}
    for snap, r in zip(snapshots, rows):
        if not r.is_parent and r.sent and r.state in TERMINAL:
            hours.setdefault(snap.created_at.isoformat()[:13], []).append(r.fill_ratio)
    return [{"hour": h, "orders": len(v), "fill_rate": ratio(sum(v, Decimal(0)), len(v))}
            for h, v in sorted(hours.items())]


def estimate_vs_realized(rows: list[OrderRecord]) -> list[dict[str, Any]]:
    """Per venue and quote: the pre-trade slippage estimate (cost, bps) beside the realized cost
    (-arrival slippage bps), averaged over orders with both; estimated fees beside realized."""
    groups: dict[tuple[str, str], list[OrderRecord]] = {}
    for r in rows:
        if not r.is_parent and r.sent:
            groups.setdefault((r.venue, r.quote_currency), []).append(r)
    out = []
    for (venue, quote), members in sorted(groups.items()):
        both = [r for r in members if r.estimated_slippage_bps is not None and r.arrival_slippage_bps is not None]
        fees = [r for r in members if r.estimated_fee is not None]
        out.append({
            "venue": venue, "quote_currency": quote, "orders": len(both),
            "estimated_slippage_cost_bps": _mean([r.estimated_slippage_bps for r in both]),
            "realized_slippage_cost_bps": _mean([-r.arrival_slippage_bps for r in both]),
            "estimated_fees": sum((r.estimated_fee for r in fees), Decimal(0)),
            "realized_fees": sum((r.fees for r in fees), Decimal(0)),
        })
    return out


def _mean(values: list[Decimal]) -> Decimal | None:
    return (sum(values, Decimal(0)) / len(values)).quantize(BPS_QUANTUM) if values else None


def build_report(snapshots: list[OrderSnapshot], since: datetime | None = None, until: datetime | None = None,
                 paths: dict[str, list[MarketPoint]] | None = None) -> dict[str, Any]:
    """`snapshots`: the orders created in [since, until) (the store filters); `paths`: market
    paths per symbol, for the parents' TWAP / VWAP benchmarks where one is known (else the mids the
    platform observed: TWAP only)."""
    rows = records(snapshots)
    leaves = [s for s, r in zip(snapshots, rows) if not r.is_parent]
    return {
        "since": since, "until": until,
        "orders": len(leaves), "parent_orders": len(snapshots) - len(leaves),
        "states": {state: sum(1 for s in snapshots if s.state.value == state)
                   for state in sorted({s.state.value for s in snapshots})},
        # Ratios and times need no currency: over every venue order. Money only per quote currency.
        "overall": {k: v for k, v in group_metrics([r for r in rows if not r.is_parent]).items() if k in CURRENCY_FREE},
        "summary": [{k: v for k, v in row.items() if k != "key"} for row in aggregate(rows, None)],
        "by": {dimension: aggregate(rows, dimension) for dimension in DIMENSIONS},
        "exchanges": venue_performance(rows),
        "latency_stages": latency_stages(leaves),
        "parents": parents_section(snapshots, paths),
        "slippage_histogram": slippage_histogram(rows),
        "cost_breakdown": cost_breakdown(snapshots, rows),
        "fill_rate_by_hour": fill_rate_by_hour(snapshots, rows),
        "estimate_vs_realized": estimate_vs_realized(rows),
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


# --- text --------------------------------------------------------------------------------------
def _fmt(value: Any, pct: bool = False, money: bool = False) -> str:
    if value is None:
        return "-"
    number = Decimal(str(value))
    if money:  # a BTC amount needs its decimals: 8 places at most, trailing zeros dropped
        return format(number.quantize(Decimal("1e-8")).normalize(), "f")
    return f"{number * 100:.1f}%" if pct else f"{number:.2f}"


def headline(doc: dict[str, Any]) -> list[str]:
    """The figures the demo ends with: per quote currency, outcome, fill, cost."""
    lines = [f"orders {doc['orders']} (+{doc['parent_orders']} parents); states: "
             + ", ".join(f"{k} {v}" for k, v in doc["states"].items())]
    for row in doc["summary"]:
        lines.append(f"  {row['quote_currency']}: success {_fmt(row['success_rate'], True)}, fill rate "
                     f"{_fmt(row['fill_rate'], True)}, execution p50 {_fmt(row['execution_ms_p50'])} ms "
                     f"p99 {_fmt(row['execution_ms_p99'])} ms, slippage {_fmt(row['slippage_bps'])} bps, "
                     f"fees {_fmt(row['fees'], money=True)}, total cost {_fmt(row['total_cost'], money=True)} "
                     f"({_fmt(row['total_cost_bps'])} bps; negative is a cost)")
    return lines


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    return ["", title, line, "-" * len(line), *("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)]


def render_text(doc: dict[str, Any]) -> str:
    lines = headline(doc)
    header = ["key", "ccy", "orders", "success", "fill", "exec p50 ms", "exec p99 ms", "notional", "fees",
              "slip bps", "cost", "cost bps"]
    for dimension in DIMENSIONS:
        lines += _table(f"by {dimension}", header, [
            [str(r["key"]), r["quote_currency"], str(r["orders"]), _fmt(r["success_rate"], True),
             _fmt(r["fill_rate"], True), _fmt(r["execution_ms_p50"]), _fmt(r["execution_ms_p99"]),
             _fmt(r["notional"], money=True), _fmt(r["fees"], money=True), _fmt(r["slippage_bps"]),
             _fmt(r["total_cost"], money=True),
             _fmt(r["total_cost_bps"])] for r in doc["by"][dimension]])
    lines += _table("exchange performance", ["venue", "orders", "sent", "ack p50 ms", "ack p99 ms", "reject",
                                             "timeout", "unknown", "circuit open", "uptime"], [
        [r["venue"], str(r["orders"]), str(r["sent"]), _fmt(r["ack_ms_p50"]), _fmt(r["ack_ms_p99"]),
         _fmt(r["reject_rate"], True), _fmt(r["timeout_rate"], True), _fmt(r["unknown_rate"], True),
         _fmt(r["circuit_open_rate"], True), _fmt(r["uptime"], True)] for r in doc["exchanges"]])
    lines += _table("latency stages", ["stage", "orders", "p50 ms", "p99 ms"], [
        [stage, str(v["orders"]), _fmt(v["p50"]), _fmt(v["p99"])] for stage, v in doc["latency_stages"].items()])
    if doc["parents"]:
        lines += _table("parent orders", ["order", "algo", "children", "fill", "slip bps", "vs TWAP bps",
                                          "vs VWAP bps"], [
            [p["order_id"], p["algorithm"], str(p["children"]), _fmt(p["fill_ratio"], True),
             _fmt(p["arrival_slippage_bps"]), _fmt(p["slippage_vs_twap_bps"]), _fmt(p["slippage_vs_vwap_bps"])]
            for p in doc["parents"]])
    return "\n".join(lines)


# --- the one entry point of the API and the CLI ------------------------------------------------------
def parse_bound(name: str, text: str | None) -> datetime | None:
    """A `since` / `until` bound: ISO 8601 with a timezone (an instant, never a local guess)."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: not an ISO 8601 time such as 2026-03-02T09:00:00Z: {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"{name}: the time must carry a timezone (e.g. 2026-03-02T09:00:00Z)")
    return value


def report_document(store, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    """The JSON document `GET /report` and `tom report --json` both answer, for orders created in
    [since, until). Raises ValueError for a malformed bound."""
    start, end = parse_bound("since", since), parse_bound("until", until)
    if start is not None and end is not None and start >= end:
        raise ValueError("since must be before until")
    return jsonable(build_report(store.order_snapshots(start, end), start, end))
