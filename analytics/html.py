"""The HTML report: one self-contained page (inline CSS and SVG, no script, no network) drawn from
the report document (analytics/report.py, in its JSON form), so the CLI can draw it from the API's
answer or the local database alike.

Plots: slippage distribution per venue, cost breakdown (implementation shortfall's parts), latency
stages, fill rate over time, estimate vs realized. Each is a <figure> with an id and an <svg>.
"""
from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

COLORS = ("#3b6fb6", "#d9822b", "#5a9e4b", "#b6443b", "#7d5ba6", "#4a9aa8")
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 260, 60, 60, 24


def _num(value: Any) -> float | None:
    return None if value is None else float(Decimal(str(value)))


def bar_chart(labels: list[str], series: list[tuple[str, list[Any]]], unit: str) -> str:
    """Grouped vertical bars around a zero line (values may be negative); None draws no bar."""
    values = [v for _, vs in series for v in (_num(x) for x in vs) if v is not None]
    top, bottom = max([0.0, *values]), min([0.0, *values])
    span = (top - bottom) or 1.0
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    zero_y = PAD_TOP + plot_h * top / span
    group_w = (WIDTH - PAD_LEFT - 10) / max(len(labels), 1)
    bar_w = max(group_w * 0.8 / max(len(series), 1), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f'<line x1="{PAD_LEFT}" x2="{WIDTH - 10}" y1="{zero_y:.1f}" y2="{zero_y:.1f}" stroke="#444"/>',
             f'<text x="4" y="{PAD_TOP - 8}" font-size="11">{escape(unit)}</text>',
             f'<text x="4" y="{PAD_TOP + 4}" font-size="10">{top:.4g}</text>',
             f'<text x="4" y="{HEIGHT - PAD_BOTTOM}" font-size="10">{bottom:.4g}</text>']
    for i, label in enumerate(labels):
        x0 = PAD_LEFT + i * group_w + group_w * 0.1
        for j, (name, vs) in enumerate(series):
            value = _num(vs[i])
            if value is None:
                continue
            h = plot_h * abs(value) / span
            y = zero_y - h if value >= 0 else zero_y
            parts.append(f'<rect class="bar" x="{x0 + j * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{max(h, 0.5):.1f}" fill="{COLORS[j % len(COLORS)]}">'
                         f'<title>{escape(label)} {escape(name)}: {value:.6g}</title></rect>')
        parts.append(f'<text x="{x0:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" font-size="10" '
                     f'transform="rotate(20 {x0:.1f} {HEIGHT - PAD_BOTTOM + 14})">{escape(label)}</text>')
    for j, (name, _) in enumerate(series):
        parts.append(f'<rect x="{PAD_LEFT + j * 140}" y="{HEIGHT - 14}" width="10" height="10" '
                     f'fill="{COLORS[j % len(COLORS)]}"/><text x="{PAD_LEFT + j * 140 + 14}" y="{HEIGHT - 5}" '
                     f'font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _figure(plot_id: str, title: str, body: str, note: str = "") -> str:
    caption = escape(title) + (f' <span class="note">{escape(note)}</span>' if note else "")
    return f'<figure id="{plot_id}" class="plot"><figcaption>{caption}</figcaption>{body}</figure>'


def _empty(text: str = "no data in this period") -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="40"><text x="10" y="24">' \
           f"{escape(text)}</text></svg>"


def _bin_label(b: dict[str, Any]) -> str:
    lo, hi = b["from"], b["to"]
    return f"< {hi}" if lo is None else f">= {lo}" if hi is None else f"{lo}..{hi}"


def plots(doc: dict[str, Any]) -> list[str]:
    out = []
    hist = doc["slippage_histogram"]
    if hist:
        bins = next(iter(hist.values()))
        out.append(_figure("plot-slippage", "Arrival slippage distribution per venue",
                           bar_chart([_bin_label(b) for b in bins],
                                     [(venue, [b["orders"] for b in bs]) for venue, bs in hist.items()], "orders"),
                           "bps, negative is a cost"))
    else:
        out.append(_figure("plot-slippage", "Arrival slippage distribution per venue", _empty()))
    costs = doc["cost_breakdown"]
    body = "".join(bar_chart(["delay", "execution", "fees", "opportunity", "total"],
                             [(row["quote_currency"], [row[k] for k in ("delay", "execution", "fees", "opportunity",
                                                                          "total")])],
                             row["quote_currency"]) for row in costs) or _empty()
    out.append(_figure("plot-costs", "Cost breakdown (implementation shortfall) per quote currency", body,
                       "negative is a cost; never summed across currencies"))
    stages = doc["latency_stages"]
    out.append(_figure("plot-latency", "Latency stages", bar_chart(
        [s.removesuffix("_ms") for s in stages],
        [("p50", [v["p50"] for v in stages.values()]), ("p99", [v["p99"] for v in stages.values()])], "ms")))
    hours = doc["fill_rate_by_hour"]
    out.append(_figure("plot-fill-rate", "Fill rate over time (per hour, UTC)", bar_chart(
        [h["hour"] for h in hours], [("fill rate", [h["fill_rate"] for h in hours])], "share")
        if hours else _empty()))
    est = doc["estimate_vs_realized"]
    out.append(_figure("plot-estimate", "Pre-trade estimate vs realized", bar_chart(
        [f"{r['venue']} {r['quote_currency']}" for r in est],
        [("estimated slippage cost", [r["estimated_slippage_cost_bps"] for r in est]),
         ("realized slippage cost", [r["realized_slippage_cost_bps"] for r in est])], "bps (cost positive)")
        if est else _empty()))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape('-' if c is None else str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: dict[str, Any], title: str = "Execution report") -> str:
    """`doc`: the report document in its JSON form (analytics.report.jsonable)."""
    period = f"{doc.get('since') or 'the beginning'} to {doc.get('until') or 'now'}"
    summary = _table(["quote", "orders", "success rate", "fill rate", "exec p50 ms", "exec p99 ms", "notional",
                      "fees", "slippage bps", "total cost", "total cost bps"],
                     [[r["quote_currency"], r["orders"], r["success_rate"], r["fill_rate"], r["execution_ms_p50"],
                       r["execution_ms_p99"], r["notional"], r["fees"], r["slippage_bps"], r["total_cost"],
                       r["total_cost_bps"]] for r in doc["summary"]])
    venues = _table(["venue", "quote", "orders", "success rate", "fill rate", "slippage bps", "fees", "total cost"],
                    [[r["key"], r["quote_currency"], r["orders"], r["success_rate"], r["fill_rate"],
                      r["slippage_bps"], r["fees"], r["total_cost"]] for r in doc["by"]["venue"]])
    exchanges = _table(["venue", "orders", "sent", "ack p50 ms", "ack p99 ms", "reject", "timeout", "unknown",
                        "circuit open", "uptime"],
                       [[r["venue"], r["orders"], r["sent"], r["ack_ms_p50"], r["ack_ms_p99"], r["reject_rate"],
                         r["timeout_rate"], r["unknown_rate"], r["circuit_open_rate"], r["uptime"]]
                        for r in doc["exchanges"]])
    parents = _table(["order", "algorithm", "children", "fill ratio", "average fill", "arrival slippage bps",
                      "shortfall bps", "TWAP", "VWAP", "vs TWAP bps", "vs VWAP bps"],
                     [[p["order_id"], p["algorithm"], p["children"], p["fill_ratio"], p["average_fill_price"],
                       p["arrival_slippage_bps"], p["shortfall_bps"], p["twap"], p["vwap"], p["slippage_vs_twap_bps"],
                       p["slippage_vs_vwap_bps"]] for p in doc["parents"]]) if doc["parents"] else "<p>none</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }}
figure.plot {{ display: inline-block; margin: 8px 16px 24px 0; vertical-align: top; }}
figcaption {{ font-weight: bold; margin-bottom: 4px; }}
.note {{ font-weight: normal; color: #666; font-size: 12px; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>Orders created from {escape(period)}: {doc['orders']} venue orders, {doc['parent_orders']} parent orders.
Money per quote currency; P&amp;L-signed (negative is a cost).</p>
<h2>Summary</h2>{summary}
<h2>Plots</h2>
{''.join(plots(doc))}
<h2>By venue</h2>{venues}
<h2>Exchange performance</h2>{exchanges}
<h2>Parent orders</h2>{parents}
</body></html>
"""
