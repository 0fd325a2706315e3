"""Client commands of the `tom` CLI: submit, cancel, amend, status, orders, report, demo.

They talk to Temporal directly (starts, updates, queries) and to the API when a read needs the
database (`orders`, `report`), falling back to Temporal visibility or a read-only database file.
Every failure a user can cause or fix is one line (UserError) and a non-zero exit.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from oms.events import order_cache_key
from oms.markets import level_notional, simulated_market
from oms.models import TERMINAL_STATES, AmendRequest, CancelRequest, OrderSnapshot, OrderState, Signal
from oms.venue_model import mid_price
from workers.cli import UserError
from workers.intake import InvalidSignal, loads_strict, parse_signal, start_order
from workers.runtime import connect_temporal, redis_client


def _run(coro) -> int:
    return _run_async(coro) or 0


def _run_async(coro) -> Any:
    """asyncio.run, with Redis refusing our password as one line for the user."""
    from redis.exceptions import AuthenticationError

    try:
        return asyncio.run(coro)
    except AuthenticationError:
        raise UserError("Redis refused the connection: it requires a password (messaging.password, REDIS_PASSWORD "
                        "in local.yaml; `tom dev` uses REDIS_PASSWORD when set, else a random one per run that "
                        "only its own processes know)") from None


async def _client(settings: Settings) -> Client:
    try:
        return await asyncio.wait_for(connect_temporal(settings), 10)
    except Exception as exc:
        raise UserError(f"cannot reach Temporal at {settings.temporal.address} ({type(exc).__name__}); "
                        "is `tom dev` running?") from None


def _snapshot_table(snap: OrderSnapshot) -> str:
    rows = [("order", snap.order_id), ("state", snap.state.value + (f" ({snap.reason})" if snap.reason else "")),
            ("instrument", f"{snap.side.value} {snap.quantity} {snap.symbol} on {snap.exchange}"),
            ("type", f"{snap.order_type.value} {snap.time_in_force.value}"
                     + (f" @ {snap.limit_price}" if snap.limit_price else "")),
            ("filled", f"{snap.filled_quantity} @ {snap.average_fill_price or '-'}  fees {snap.fees}"),
            ("slippage", f"{snap.slippage_bps} bps" if snap.slippage_bps is not None else "-"),
            ("client id", snap.client_order_id)]
    if snap.routing_reason:  # why this venue (smart routing)
        rows.append(("routing", snap.routing_reason))
    if snap.parent_order_id:
        rows.append(("parent", snap.parent_order_id))
    if snap.algo:
        rows.append(("algorithm", f"{snap.algo}: {len(snap.children)} children"))
    rows += _tca_rows(snap)
    lines = [f"{k:<11} {v}" for k, v in rows]
    lines += [f"  {c.order_id:<34} {c.state.value:<17} {c.filled_quantity}/{c.quantity} on {c.exchange}"
              for c in snap.children]
    lines += [f"  {t.at.strftime('%H:%M:%S.%f')[:-3]}  {t.state.value:<17} {t.reason or ''}" for t in snap.transitions]
    return "\n".join(lines)


# --- submit -------------------------------------------------------------------------------------
def _signals_from_args(args) -> list[dict[str, Any]]:
    if args.file:
        try:  # strict, as every intake: a duplicate key must not silently lose to the last one
            data = loads_strict(Path(args.file).read_text())
        except (OSError, ValueError, InvalidSignal) as exc:
            raise UserError(f"cannot read signals from {args.file}: {exc}") from None
        return data if isinstance(data, list) else [data]
    if not (args.symbol and args.side and args.quantity):
        raise UserError("give --file, or --symbol, --side and --quantity")
    fields = {"signal_id": args.signal_id or f"cli-{uuid.uuid4().hex[:12]}", "strategy_id": args.strategy_id,
              "symbol": args.symbol, "side": args.side, "quantity": args.quantity,
              "order_type": args.order_type, "limit_price": args.limit_price, "time_in_force": args.time_in_force,
              "expire_at": args.expire_at, "exchange": args.exchange, "reference_price": args.reference_price}
    return [{k: v for k, v in fields.items() if v is not None}]


def submit(settings: Settings, args) -> int:
    async def go() -> int:
        signals: list[Signal] = []
        for raw in _signals_from_args(args):
            try:
                signals.append(parse_signal(json.dumps(raw, default=str), settings))
            except InvalidSignal as exc:
                raise UserError(f"invalid signal: {exc}") from None
        if args.via == "stream":
            from messaging import publish_signals  # the configured transport: Redis stream or Pub/Sub

            redis = redis_client(settings)
            try:
                where = await publish_signals(settings, redis, [signal.model_dump_json() for signal in signals])
            finally:
                await redis.aclose()
            for signal in signals:
                print(f"published {signal.workflow_id} to {where}")
            return 0
        client = await _client(settings)
        for signal in signals:
            result = await start_order(client, settings, signal)
            print(f"{result.order_id} {'started' if result.created else 'already exists'}")
            if args.wait:
                final = await client.get_workflow_handle(result.order_id, result_type=OrderSnapshot).result()
                print(_snapshot_table(final))
        return 0

    return _run(go())


# --- cancel / amend / status --------------------------------------------------------------------
async def _update(settings: Settings, order_id: str, name: str, arg) -> OrderSnapshot:
    client = await _client(settings)
    handle = client.get_workflow_handle(order_id)
    try:
        return await handle.execute_update(name, arg, result_type=OrderSnapshot)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise UserError(cause.message if isinstance(cause, ApplicationError) else str(cause or exc)) from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            try:
                final = await handle.query("status", result_type=OrderSnapshot)
            except RPCError:
                raise UserError(f"no order {order_id}") from None
            raise UserError(f"order is already {final.state.value}") from None
        raise UserError(f"Temporal: {exc.message}") from None


def _refusal(exc: ValidationError) -> str:
    """A request model's refusal as one line: `field: why` for each problem."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_url=False))


def cancel(settings: Settings, args) -> int:
    try:
        request = CancelRequest(reason=args.reason)
    except ValidationError as exc:
        raise UserError(_refusal(exc)) from None
    snap = asyncio.run(_update(settings, args.order_id, "cancel_order", request))
    print(_snapshot_table(snap))
    return 0


def amend(settings: Settings, args) -> int:
    try:
        request = AmendRequest(quantity=args.quantity, limit_price=args.limit_price)
    except ValidationError as exc:
        raise UserError(_refusal(exc)) from None
    print(_snapshot_table(asyncio.run(_update(settings, args.order_id, "amend_order", request))))
    return 0


async def fetch_snapshot(settings: Settings, order_id: str) -> OrderSnapshot:
    """The order cache first (no load on Temporal), then the workflow's `status` query."""
    redis = redis_client(settings)
    try:
        cached = await redis.get(order_cache_key(order_id))
    except Exception:
        cached = None
    finally:
        await redis.aclose()
    if cached:
        return OrderSnapshot.model_validate_json(cached)
    client = await _client(settings)
    try:
        return await client.get_workflow_handle(order_id).query("status", result_type=OrderSnapshot)
    except RPCError as exc:
        raise UserError(f"no order {order_id}" if exc.status == RPCStatusCode.NOT_FOUND else exc.message) from None


def _tca_rows(snap: OrderSnapshot) -> list[tuple[str, str]]:
    """The order's transaction costs (oms/tca.py), P&L-signed: negative is a cost."""
    tca = snap.tca
    if tca is None:
        return []

    def d(value) -> str:
        return "-" if value is None else format(value.normalize(), "f")

    q = tca.quote_currency
    rows = [("prices", f"decision {d(tca.decision_price)}  arrival {d(tca.arrival_price)}  "
                       f"average fill {d(tca.average_fill_price)}  fill ratio {d(tca.fill_ratio)}"),
            ("costs", f"arrival slippage {d(tca.arrival_slippage)} {q} ({d(tca.arrival_slippage_bps)} bps)  "
                      f"fee impact {d(tca.fee_bps)} bps  (negative is a cost)"),
            ("estimate", f"fee {d(tca.estimated_fee)} {q} (realized {d(tca.fees)})  "
                         f"slippage {d(tca.estimated_slippage_bps)} bps cost")]
    if tca.shortfall is not None:
        s = tca.shortfall
        rows.append(("shortfall", f"{d(s.total)} {q} ({d(s.total_bps)} bps): delay {d(s.delay)}, execution "
                                  f"{d(s.execution)}, fees {d(s.fees)}, opportunity {d(s.opportunity)}"))
    stages = [(name.removesuffix("_ms"), d(value)) for name, value in tca.latency if value is not None]
    rows.append(("latency", "  ".join(f"{name} {value} ms" for name, value in stages) or "-"))
    return rows


def status(settings: Settings, args) -> int:
    snap = asyncio.run(fetch_snapshot(settings, args.order_id))
    print(snap.model_dump_json(indent=2) if args.json else _snapshot_table(snap))
    return 0


# --- orders / report ----------------------------------------------------------------------------
def _api(settings: Settings) -> str:
    host = "127.0.0.1" if settings.service.host in ("0.0.0.0", "localhost") else settings.service.host
    return f"http://{host}:{settings.service.port}"


API_TOKEN_ENV = "TOM_API_TOKEN"


def _api_get(settings: Settings, path: str, **kwargs: Any) -> httpx.Response:
    """GET from the API with the bearer token of $TOM_API_TOKEN. A refusal of the token is the
    user's to fix (one line, never the token); other HTTP failures propagate for the fallback."""
    token = os.environ.get(API_TOKEN_ENV, "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{_api(settings)}{path}", headers=headers, **kwargs)
    if response.status_code in (401, 403):
        try:
            detail = response.json().get("detail", "")
        except ValueError:
            detail = ""
        hint = f"set {API_TOKEN_ENV}" if not token else f"check {API_TOKEN_ENV}"
        raise UserError(f"the API refused {path} ({response.status_code}: {detail}); {hint}")
    return response


def orders(settings: Settings, args) -> int:
    params = {k: v for k, v in {"state": args.state, "symbol": args.symbol, "strategy": args.strategy,
                                "exchange": args.exchange, "limit": args.limit}.items() if v}
    try:
        response = _api_get(settings, "/orders", params=params, timeout=5)
        response.raise_for_status()
        rows = [OrderSnapshot.model_validate(o) for o in response.json()["orders"]]
    except httpx.HTTPError:
        rows = asyncio.run(_orders_from_visibility(settings, args))
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return 0
    print(f"{'ORDER':<34} {'STATE':<17} {'SIDE':<4} {'QTY':>12} {'SYMBOL':<10} {'FILLED':>12} {'AVG PRICE':>14} EXCHANGE")
    for r in rows:
        print(f"{r.order_id[:34]:<34} {r.state.value:<17} {r.side.value:<4} {r.quantity:>12} {r.symbol:<10} "
              f"{r.filled_quantity:>12} {str(r.average_fill_price or '-')[:14]:>14} {r.exchange}"
              + (f"  [{r.algo} parent: {len(r.children)} children]" if r.algo else "")
              + (f"  [child of {r.parent_order_id}]" if r.parent_order_id else ""))
    return 0


async def _orders_from_visibility(settings: Settings, args) -> list[OrderSnapshot]:
    """Without the API: list through Temporal visibility (search attributes), snapshots by query."""
    clauses = ["WorkflowType IN ('OrderWorkflow', 'ParentOrderWorkflow')"]
    for attribute, value in (("OrderState", args.state), ("Symbol", args.symbol), ("StrategyId", args.strategy),
                             ("Exchange", args.exchange)):
        if value:
            clauses.append(f"{attribute} = '{value.replace(chr(39), '')}'")
    client = await _client(settings)
    snapshots = []
    async for execution in client.list_workflows(" AND ".join(clauses), limit=args.limit):
        try:
            snapshots.append(await client.get_workflow_handle(execution.id, run_id=execution.run_id)
                             .query("status", result_type=OrderSnapshot))
        except RPCError:
            continue
    return snapshots


def report(settings: Settings, args) -> int:
    """From the API (the recorder's database), else a read-only open of the database (the local DuckDB
    file, or BigQuery directly)."""
    from analytics.html import render_html
    from analytics.report import parse_bound, render_text, report_document

    try:  # refused here with its reason, never sent on to be refused by the API
        parse_bound("--since", args.since), parse_bound("--until", args.until)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    bounds = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
    try:
        response = _api_get(settings, "/report", params=bounds, timeout=30)
        if response.status_code == 422:
            raise UserError(response.json().get("detail", response.text))
        response.raise_for_status()
        data = response.json()
    except httpx.HTTPError:
        if settings.database.type == "duckdb" and not Path(settings.database.path).exists():
            raise UserError("the API is not running and there is no local database to read") from None
        from storage import open_storage

        where = settings.database.path if settings.database.type == "duckdb" else settings.database.dataset
        try:  # BigQuery has no single-writer rule: read it directly
            store = open_storage(settings, read_only=True)
        except Exception as exc:
            raise UserError(f"cannot open {where}: {exc}") from None
        try:
            data = report_document(store, args.since, args.until)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        finally:
            store.close()
    if args.html:
        Path(args.html).write_text(render_html(data), encoding="utf-8")
        print(f"report written to {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
    elif not args.html:
        print(render_text(data))
    return 0


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# --- demo ---------------------------------------------------------------------------------------
DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT")


def demo_signals(settings: Settings, count: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """A realistic mix: market orders with reference prices, limits near the touch (some fill, some
    rest until their GTD expiry), an IOC, and two bad ones (a malformed and an oversized order)."""
    now = now or datetime.now(timezone.utc)
    sim = settings.execution.simulation
    rng = random.Random(now.timestamp())
    run = uuid.uuid4().hex[:6]
    signals: list[dict[str, Any]] = []
    for i in range(count):
        symbol = DEMO_SYMBOLS[i % len(DEMO_SYMBOLS)]
        market = simulated_market(symbol)
        mid = mid_price(symbol, now, sim)
        notional = Decimal(rng.randint(20, int(settings.account_limits.max_order_value * 0.8)))
        quantity = Decimal(int(notional / mid / market.amount_step)) * market.amount_step  # fixed point, whole lots
        side = rng.choice(("buy", "sell"))
        signal: dict[str, Any] = {"signal_id": f"demo-{run}-{i:03d}", "strategy_id": rng.choice(("momentum", "meanrev")),
                                  "symbol": symbol, "side": side, "quantity": str(quantity),
                                  "reference_price": str(mid), "created_at": now.isoformat()}
        kind = i % 6
        if kind in (3, 4):  # limits a few bps from mid: some cross soon, some expire
            offset = Decimal(rng.choice((-8, -3, 3))) / 10_000
            price = mid * (1 + offset if side == "buy" else 1 - offset)
            price = Decimal(int(price / market.price_step)) * market.price_step
            signal.update(order_type="limit", limit_price=str(price), time_in_force="GTD",
                          expire_at=(now + timedelta(seconds=20)).isoformat())
        elif kind == 5:
            signal.update(time_in_force="IOC")
        signals.append(signal)
    if count >= 10:
        signals[4] = {"signal_id": f"demo-{run}-bad", "symbol": "BTC/USDT"}  # malformed: dead letter
        big = signals[7]
        big["quantity"] = str(Decimal(big["quantity"]) * 50)  # above max_order_value: denied
        signals[-1] = _twap_signal(settings, f"demo-{run}-twap", now)
        if len(simulated_venues(settings)) > 1:
            signals[-2] = _split_signal(settings, f"demo-{run}-split", now)
    return signals


def simulated_venues(settings: Settings) -> list[str]:
    """The simulated venues smart routing chooses between (simulation mode only)."""
    e = settings.execution
    if e.mode != "simulation" or e.routing != "smart":
        return []
    return ["simulation", *e.simulation.venues]


def _demo_quantity(settings: Settings, symbol: str, notional: Decimal, now: datetime) -> Decimal:
    step = simulated_market(symbol).amount_step
    mid = mid_price(symbol, now, settings.execution.simulation)
    # A whole number of lots, in fixed point: a quotient can carry a positive exponent (2.00E+3),
    # which would reach the signal and the order as written.
    return Decimal(int(notional / mid / step)) * step


def _split_signal(settings: Settings, signal_id: str, now: datetime) -> dict[str, Any]:
    """A market buy larger than the thinnest venue's depth within the collar (and within
    max_order_value): the router splits it, a parent with a child per venue. ADA/USDT, as the demo's
    other orders do not trade it."""
    symbol = "ADA/USDT"
    sim = settings.execution.simulation
    collar_levels = settings.orders.max_slippage_bps  # levels are 1 bp apart
    thinnest = min(level_notional(symbol) * Decimal(repr(sim.venue(v).depth_scale))
                   * min(sim.venue(v).depth_levels, collar_levels) for v in simulated_venues(settings))
    notional = min(thinnest * Decimal("1.5"), Decimal(repr(settings.account_limits.max_order_value)) * Decimal("0.9"))
    return {"signal_id": signal_id, "strategy_id": "momentum", "symbol": symbol, "side": "buy",
            "quantity": str(_demo_quantity(settings, symbol, notional, now)), "created_at": now.isoformat()}


def _twap_signal(settings: Settings, signal_id: str, now: datetime) -> dict[str, Any]:
    """A TWAP: 3 slices 2 s apart, each well above the venues' minimums."""
    notional = Decimal(repr(settings.account_limits.max_order_value)) * Decimal("0.3")
    return {"signal_id": signal_id, "strategy_id": "meanrev", "symbol": "ETH/USDT", "side": "sell",
            "quantity": str(_demo_quantity(settings, "ETH/USDT", notional, now)), "created_at": now.isoformat(),
            "execution": {"algo": "twap", "duration_s": 6, "slices": 3}}


def _bar(done: int, total: int, label: str, width: int = 30) -> None:
    filled = int(width * done / max(total, 1))
    sys.stdout.write(f"\r  {label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stdout.flush()


async def run_demo(settings: Settings, orders: int = 24, rate: float = 10.0, timeout: float = 120.0) -> dict[str, Any]:
    """Publish demo signals onto the signals stream, follow them to terminal states, summarize."""
    redis = redis_client(settings)
    signals = demo_signals(settings, orders)
    try:
        from messaging import publish_signals, signals_destination  # Redis stream or Pub/Sub topic

        print(f"demo: publishing {len(signals)} signals to {signals_destination(settings)} at {rate}/s")
        if settings.execution.mode == "simulation" and len(simulated_venues(settings)) < 2 and orders >= 10:
            print("demo: one simulated venue to route to (execution.simulation.venues unset, or routing: first): "
                  "no split order; `tom dev` adds a second venue")
        for i, signal in enumerate(signals, 1):
            await publish_signals(settings, redis, [json.dumps(signal)])
            _bar(i, len(signals), "published")
            await asyncio.sleep(1 / rate)
        print()
        order_ids = [f"order-{s['signal_id']}" for s in signals if "strategy_id" in s]
        final: dict[str, OrderSnapshot] = {}
        shown = -1
        deadline = time.monotonic() + timeout
        while len(final) < len(order_ids) and time.monotonic() < deadline:
            for order_id in order_ids:
                if order_id in final:
                    continue
                raw = await redis.get(order_cache_key(order_id))
                if raw:
                    snap = OrderSnapshot.model_validate_json(raw)
                    if snap.state in TERMINAL_STATES:
                        final[order_id] = snap
            if len(final) != shown:
                shown = len(final)
                _bar(shown, len(order_ids), "terminal")
            await asyncio.sleep(0.25)
        print()
        dead = await redis.xlen("signals.dead")
    finally:
        await redis.aclose()
    return summarize(final, len(order_ids), dead)


def summarize(final: dict[str, OrderSnapshot], expected: int, dead_letters: int) -> dict[str, Any]:
    states: dict[str, int] = {}
    for snap in final.values():
        states[snap.state.value] = states.get(snap.state.value, 0) + 1
    to_venue = sorted(_ms(s, {OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED, OrderState.FILLED,
                              OrderState.EXPIRED, OrderState.REJECTED}) for s in final.values()
                      if s.state != OrderState.DENIED)
    to_venue = [v for v in to_venue if v is not None]
    slippage = [float(s.slippage_bps) for s in final.values() if s.slippage_bps is not None]
    return {
        "orders": expected, "terminal": len(final), "states": states,
        "fill_rate": states.get("filled", 0) / expected if expected else None,
        "order_to_venue_ms_p50": _percentile(to_venue, 0.5), "order_to_venue_ms_p99": _percentile(to_venue, 0.99),
        "avg_slippage_bps": sum(slippage) / len(slippage) if slippage else None,
        "fees": float(sum((s.fees for s in final.values()), Decimal(0))),
        "dead_letters_total": dead_letters,
        "denials": sorted({s.reason.split(":")[0] for s in final.values() if s.state == OrderState.DENIED and s.reason}),
        "parents": [{"order_id": s.order_id, "algo": s.algo, "state": s.state.value,
                     "filled_quantity": str(s.filled_quantity), "quantity": str(s.quantity),
                     "children": [{"order_id": c.order_id, "exchange": c.exchange, "quantity": str(c.quantity),
                                   "filled_quantity": str(c.filled_quantity), "state": c.state.value}
                                  for c in s.children]}
                    for s in sorted(final.values(), key=lambda s: s.order_id) if s.children],
    }


def _ms(snap: OrderSnapshot, targets: set[OrderState]) -> float | None:
    reached = next((t.at for t in snap.transitions if t.state in targets), None)
    return (reached - snap.created_at).total_seconds() * 1000 if reached else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def print_summary(summary: dict[str, Any]) -> None:
    print(f"demo: {summary['terminal']}/{summary['orders']} orders terminal; states "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary["states"].items())))
    print(f"      fill rate {_pct(summary['fill_rate'])}, order created->venue answer p50 "
          f"{summary['order_to_venue_ms_p50']} ms p99 {summary['order_to_venue_ms_p99']} ms, avg slippage {_num(summary['avg_slippage_bps'])} bps, "
          f"fees {summary['fees']:.4f} USDT")
    if summary["denials"]:
        print(f"      denied: {', '.join(summary['denials'])}")
    print(f"      dead letters so far: {summary['dead_letters_total']} (stream signals.dead)")
    for parent in summary["parents"]:
        kind = "split" if parent["algo"] == "route" else parent["algo"]
        venues = sorted({c["exchange"] for c in parent["children"]})
        print(f"      {kind} {parent['order_id']}: {parent['state']} {parent['filled_quantity']}/{parent['quantity']}, "
              f"{len(parent['children'])} children on {', '.join(venues)}: "
              + ", ".join(f"{c['order_id']} {c['exchange']} {c['filled_quantity']}/{c['quantity']} {c['state']}"
                          for c in parent["children"]))


async def report_headline(settings: Settings, since: datetime, expected: int, timeout: float = 30.0) -> list[str]:
    """The report's headline figures for the orders created since `since`, from the API once its
    recorder has written the `expected` terminal orders (it writes behind the workflows)."""
    from analytics.report import headline

    deadline = time.monotonic() + timeout
    doc: dict[str, Any] | None = None
    token = os.environ.get(API_TOKEN_ENV, "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        while True:
            try:
                response = await client.get(f"{_api(settings)}/report", params={"since": since.isoformat()})
                response.raise_for_status()
                doc = response.json()
            except httpx.HTTPError as exc:
                return [f"demo report: the API at {_api(settings)} is not answering ({type(exc).__name__}); "
                        "`tom report` shows the figures once it runs"]
            recorded = sum(n for state, n in doc["states"].items() if state in TERMINAL_STATES)
            if recorded >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return ["demo report (`tom report` for the tables, `tom report --html FILE` for the plots):",
            *(f"      {line}" for line in headline(doc))]


def demo(settings: Settings, args) -> int:
    started = datetime.now(timezone.utc)
    summary = _run_async(run_demo(settings, args.orders, args.rate, args.timeout))
    print_summary(summary)
    print("\n".join(asyncio.run(report_headline(settings, started, summary["terminal"]))))
    return 0 if summary["terminal"] == summary["orders"] else 1
