"""The order's story as the Temporal UI tells it: a one-line summary and details fixed at start, and
the current details the workflow refreshes on every transition.

Pure text from the signal and the snapshot (no I/O): the intake sets the static summary and details
when it starts the workflow, the workflow sets the current details (`workflow.set_current_details`,
served by the SDK's metadata query; no history event, so it costs nothing on replay). The UI renders
details as Markdown. With a payload key they are encrypted like every other payload and shown
through the codec server.
"""
from __future__ import annotations

from decimal import Decimal

from oms.models import OrderSnapshot, OrderState, Signal

# The current details list the latest few fills (the snapshot lists more).
DETAILS_FILLS_SHOWN = 10

# How each terminal state reads in the UI's current details. Every order *workflow* completes
# successfully (its result is the snapshot, whatever the order's end): the order's outcome is
# OrderState, a column of the saved view, and the headline of these details.
_HEADLINES = {
    OrderState.FILLED: "FILLED",
    OrderState.CANCELLED: "CANCELLED",
    OrderState.EXPIRED: "EXPIRED",
    OrderState.DENIED: "DENIED by validation (never sent to a venue)",
    OrderState.REJECTED: "REJECTED by the venue",
    OrderState.FAILED: "FAILED (venue unreachable; nothing is live)",
}


def _num(value: Decimal | None) -> str:
    return "-" if value is None else format(value.normalize(), "f")


def static_summary(signal: Signal) -> str:
    """One line, fixed at start: `buy 0.01 BTC/USDT @ 50000 limit on binance`."""
    price = f"@ {_num(signal.limit_price)} limit" if signal.limit_price is not None else "at market"
    venue = signal.exchange or "the router's choice"
    return f"{signal.side.value} {_num(signal.quantity)} {signal.symbol} {price} on {venue}"


def static_details(signal: Signal) -> str:
    """The signal's terms, fixed at start (Markdown)."""
    rows = [
        ("strategy", signal.strategy_id),
        ("signal", signal.signal_id),
        ("side", signal.side.value),
        ("quantity", _num(signal.quantity)),
        ("symbol", signal.symbol),
        ("order type", signal.order_type.value if signal.order_type else "from config"),
        ("limit price", _num(signal.limit_price)),
        ("time in force", signal.time_in_force.value if signal.time_in_force else "from config"),
        ("venue", signal.exchange or "routed"),
    ]
    if signal.expire_at is not None:
        rows.append(("expire at", signal.expire_at.isoformat()))
    if signal.reference_price is not None:
        rows.append(("reference price", _num(signal.reference_price)))
    if signal.execution is not None and signal.execution.start_at is not None:
        rows.append(("start at", signal.execution.start_at.isoformat()))
    return "\n".join(f"**{name}**: {value}  " for name, value in rows)


def current_details(snap: OrderSnapshot) -> str:
    """The order now (Markdown): state headline, progress, the reason, the latest fills."""
    headline = _HEADLINES.get(snap.state, snap.state.value.upper().replace("_", " "))
    lines = [
        f"### {headline}",
        f"{snap.side.value} {_num(snap.filled_quantity)} of {_num(snap.quantity)} {snap.symbol} "
        f"on {snap.exchange}, {snap.order_type.value} {snap.time_in_force.value}"
        + (f" @ {_num(snap.limit_price)}" if snap.limit_price is not None else ""),
    ]
    if snap.average_fill_price is not None:
        lines.append(f"average price {_num(snap.average_fill_price)}, fees {_num(snap.fees)}"
                     + (f", slippage {_num(snap.slippage_bps)} bps" if snap.slippage_bps is not None else ""))
    if snap.reason:
        lines.append(f"reason: {snap.reason}")
    if snap.anomalies:
        lines.append(f"anomalies: {snap.anomalies} (last: {snap.last_anomaly})")
    lines.append(f"updated {snap.updated_at.isoformat()}, {len(snap.transitions)} transitions, "
                 f"{snap.venue_requests} venue requests")
    if snap.fills:
        shown = snap.fills[-DETAILS_FILLS_SHOWN:]
        listed = [f"- trade {f.trade_id}: {_num(f.quantity)} @ {_num(f.price)}, fee {_num(f.fee)}"
                  + (f" {f.fee_currency}" if f.fee_currency else "") + (f" ({f.liquidity})" if f.liquidity else "")
                  for f in shown]
        lines += [f"fills: {snap.fill_count}" + (f" (latest {len(shown)})" if len(shown) < snap.fill_count else ""),
                  "\n".join(listed)]
    return "\n\n".join(lines)
