"""Aggregate execution metrics over orders (pure, exact Decimal): the report's definitions.

Every order is first flattened into an `OrderRecord` (one row of the `tca_orders` view: the same
columns, the same rules, see analytics/views.py), then grouped. Definitions:

- outcome: `success` = filled, or ended deliberately (cancelled, expired: by us or the order's own
  terms, partly filled or not); `refused` = denied (our validation) or rejected (the venue);
  `failed`; `unknown` (a venue outcome not yet reconciled); `open` (still working, not counted).
  success rate = success / (success + refused + failed + unknown).
- fill rate: the mean of per-order fill ratios (filled / ordered quantity) over orders that reached
  a venue and ended. Quantities of different instruments are never added.
- execution time: submission to terminal state (ms), average and p50 / p99 (linear interpolation,
  as DuckDB's quantile_cont).
- money is grouped by quote currency, never summed across currencies: notional, fees (rebates
  negative), arrival slippage (P&L-signed: negative is a cost), notional-weighted slippage in bps
  (= Σ slippage / Σ notional), fee impact in bps, total cost = slippage - fees (negative is a cost),
  implementation shortfall, and the pre-trade fee estimate beside the realized fees.
- aggregates count venue orders (leaves): a parent's cost is its children's, reported apart.
- exchange performance per venue, over orders sent to it: acknowledgement latency p50 / p99
  (sent -> first venue answer), reject rate, timeout rate (a transition reason names a timeout),
  unknown rate (the order passed through `unknown`), circuit-open rate (over all its orders: a
  reason names an open circuit breaker), uptime = orders the venue answered / orders sent.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pydantic import BaseModel

from oms.models import OrderSnapshot
from oms.tca import BPS_QUANTUM, TERMINAL, VENUE_ANSWER_STATES

RATE_QUANTUM = Decimal("0.000001")
MS_QUANTUM = Decimal("0.001")
DIMENSIONS = ("venue", "symbol", "strategy", "algorithm", "day", "size_bucket")
SIZE_BUCKETS = ((Decimal(1_000), "<1k"), (Decimal(10_000), "1k-10k"), (Decimal(100_000), "10k-100k"))
CHILD_ID = re.compile(r"^(.*)-c[0-9]+$")
OUTCOMES = {"filled": "success", "cancelled": "success", "expired": "success", "denied": "refused",
            "rejected": "refused", "failed": "failed", "unknown": "unknown"}


class OrderRecord(BaseModel):
    order_id: str
    parent_id: str | None
    is_parent: bool
    venue: str
    symbol: str
    quote_currency: str
    strategy: str
    algorithm: str
    day: str
    size_bucket: str
    state: str
    outcome: str
    quantity: Decimal
    fill_ratio: Decimal
    notional: Decimal
    fees: Decimal
    estimated_fee: Decimal | None
    arrival_slippage: Decimal | None
    arrival_slippage_bps: Decimal | None
    estimated_slippage_bps: Decimal | None
    shortfall: Decimal | None
    execution_ms: Decimal | None
    ack_ms: Decimal | None
    sent: bool
    acked: bool
    rejected: bool
    timed_out: bool
    went_unknown: bool
    circuit_open: bool


def size_bucket(snapshot: OrderSnapshot) -> str:
    tca = snapshot.tca
    price = (tca.arrival_price or tca.decision_price if tca else None) or snapshot.limit_price
    if price is None:
        return "unpriced"
    requested = snapshot.quantity * price
    return next((name for bound, name in SIZE_BUCKETS if requested < bound), ">=100k")


def records(snapshots: list[OrderSnapshot]) -> list[OrderRecord]:
    by_id = {s.order_id: s for s in snapshots}
    parent_of = {}  # a child is `<parent id>-c<n>` with its parent among the orders
    for snap in snapshots:
        match = CHILD_ID.match(snap.order_id)
        if match and match.group(1) in by_id:
            parent_of[snap.order_id] = by_id[match.group(1)]
    parents = {p.order_id for p in parent_of.values()}
    out = []
    for snap in snapshots:
        parent = parent_of.get(snap.order_id)
        tca = snap.tca
        algorithm = (tca.algorithm if tca else None) or (parent.tca.algorithm if parent and parent.tca else None)
        reasons = [(t.reason or "").lower() for t in snap.transitions]
        states = [t.state.value for t in snap.transitions]
        sent = "submitted" in states
        out.append(OrderRecord(
            order_id=snap.order_id, parent_id=parent.order_id if parent else None,
            is_parent=snap.order_id in parents or bool(getattr(snap, "children", None)), venue=snap.exchange, symbol=snap.symbol,
            quote_currency=snap.symbol.split("/", 1)[1], strategy=snap.strategy_id, algorithm=algorithm or "none",
            day=snap.created_at.isoformat()[:10], size_bucket=size_bucket(snap), state=snap.state.value,
            outcome=OUTCOMES.get(snap.state.value, "open"), quantity=snap.quantity,
            fill_ratio=snap.filled_quantity / snap.quantity,
            notional=tca.notional if tca else Decimal(0), fees=snap.fees,
            estimated_fee=tca.estimated_fee if tca else None,
            arrival_slippage=tca.arrival_slippage if tca else None,
            arrival_slippage_bps=tca.arrival_slippage_bps if tca else None,
            estimated_slippage_bps=tca.estimated_slippage_bps if tca else None,
            shortfall=tca.shortfall.total if tca and tca.shortfall else None,
            execution_ms=tca.latency.execution_ms if tca else None,
            ack_ms=tca.latency.sent_to_ack_ms if tca else None,
            sent=sent, acked=sent and any(s in VENUE_ANSWER_STATES for s in states),
            rejected=snap.state.value == "rejected",
            timed_out=any("timeout" in r or "timed out" in r for r in reasons),
            went_unknown="unknown" in states, circuit_open=any("circuit" in r for r in reasons)))
    return out


def quantile(values: list[Decimal], q: Decimal) -> Decimal | None:
    """Linear interpolation between the closest ranks (DuckDB's quantile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return (ordered[low] + (ordered[high] - ordered[low]) * (position - low)).quantize(MS_QUANTUM)


def ratio(numerator: Decimal | int, denominator: Decimal | int) -> Decimal | None:
    if not denominator:
        return None
    return (Decimal(numerator) / Decimal(denominator)).quantize(RATE_QUANTUM, rounding=ROUND_HALF_EVEN)


def _bps(value: Decimal, base: Decimal) -> Decimal | None:
    return (value / base * 10_000).quantize(BPS_QUANTUM, rounding=ROUND_HALF_EVEN) if base else None


def group_metrics(rows: list[OrderRecord]) -> dict[str, Any]:
    """The metrics of one group of venue orders, all in one quote currency."""
    outcomes = {k: sum(1 for r in rows if r.outcome == k) for k in ("success", "refused", "failed", "unknown", "open")}
    decided = outcomes["success"] + outcomes["refused"] + outcomes["failed"] + outcomes["unknown"]
    worked = [r for r in rows if r.sent and r.state in TERMINAL]
    execution = [r.execution_ms for r in rows if r.execution_ms is not None]
    slipped = [r for r in rows if r.arrival_slippage is not None]
    notional = sum((r.notional for r in rows), Decimal(0))
    fees = sum((r.fees for r in rows), Decimal(0))
    slippage = sum((r.arrival_slippage for r in slipped), Decimal(0))
    slipped_notional = sum((r.notional for r in slipped), Decimal(0))
    estimated = [r for r in rows if r.estimated_fee is not None and r.sent]
    return {
        "orders": len(rows), "outcomes": outcomes, "success_rate": ratio(outcomes["success"], decided),
        "fill_rate": ratio(sum((r.fill_ratio for r in worked), Decimal(0)), len(worked)),
        "execution_ms_avg": (sum(execution, Decimal(0)) / len(execution)).quantize(MS_QUANTUM) if execution else None,
        "execution_ms_p50": quantile(execution, Decimal("0.5")),
        "execution_ms_p99": quantile(execution, Decimal("0.99")),
        "notional": notional, "fees": fees, "fee_bps": _bps(-fees, notional),
        "slippage": slippage, "slippage_bps": _bps(slippage, slipped_notional),
        "total_cost": slippage - fees, "total_cost_bps": _bps(slippage - fees, notional),
        "shortfall": sum((r.shortfall for r in rows if r.shortfall is not None), Decimal(0)),
        "estimated_fees": sum((r.estimated_fee for r in estimated), Decimal(0)),
        "realized_fees_of_estimated": sum((r.fees for r in estimated), Decimal(0)),
    }


def aggregate(rows: list[OrderRecord], dimension: str | None) -> list[dict[str, Any]]:
    """One row per (dimension value, quote currency), venue orders only, sorted; dimension None:
    one row per quote currency (key "all")."""
    groups: dict[tuple[str, str], list[OrderRecord]] = {}
    for r in rows:
        if not r.is_parent:
            groups.setdefault((getattr(r, dimension) if dimension else "all", r.quote_currency), []).append(r)
    return [{"key": key, "quote_currency": quote, **group_metrics(members)}
            for (key, quote), members in sorted(groups.items())]


def venue_performance(rows: list[OrderRecord]) -> list[dict[str, Any]]:
    venues: dict[str, list[OrderRecord]] = {}
    for r in rows:
        if not r.is_parent:
            venues.setdefault(r.venue, []).append(r)
    out = []
    for venue, members in sorted(venues.items()):
        sent = [r for r in members if r.sent]
        acks = [r.ack_ms for r in sent if r.ack_ms is not None]
        out.append({
            "venue": venue, "orders": len(members), "sent": len(sent),
            "ack_ms_p50": quantile(acks, Decimal("0.5")), "ack_ms_p99": quantile(acks, Decimal("0.99")),
            "reject_rate": ratio(sum(r.rejected for r in sent), len(sent)),
            "timeout_rate": ratio(sum(r.timed_out for r in sent), len(sent)),
            "unknown_rate": ratio(sum(r.went_unknown for r in sent), len(sent)),
            "circuit_open_rate": ratio(sum(r.circuit_open for r in members), len(members)),
            "uptime": ratio(sum(r.acked for r in sent), len(sent)),
        })
    return out
