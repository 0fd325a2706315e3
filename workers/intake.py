"""Signal intake shared by the stream consumer, the HTTP API and `tom submit`.

`parse_signal` turns a raw payload into a `Signal` or a reason a person understands;
`start_order` starts its OrderWorkflow idempotently: the workflow id is `order-<signal_id>` and
the id-reuse policy refuses a second run, so a signal delivered twice (even after its order
finished) makes exactly one order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from oms.markets import simulated_market
from oms.models import Signal
from oms.parent import ParentOrderInput
from oms.story import static_details, static_summary
from workers.runtime import PARENT_WORKFLOW_TYPE, WORKFLOW_TYPE
from workflows import search_attributes

CLOCK_SKEW_S = 60  # a created_at this far ahead of our clock is still believed


class InvalidSignal(Exception):
    """The payload cannot become an order; the message says why."""


class UnstartableSignal(Exception):
    """Temporal refused to start the order for a reason no retry can change; the message says why."""


def _clip(text: str, limit: int = 60) -> str:
    """Input echoed into a reason, shortened: a reason stays readable whatever was sent."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(error: dict) -> str:
    where = _clip(".".join(str(p) for p in error["loc"]) or "signal")
    kind, message = error["type"], error["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"missing field {where}"
    if kind == "extra_forbidden":
        return f"unknown field {where}"
    return f"{where}: {message}"


KNOWN_EXCHANGES = frozenset({"simulation", "quantconnect", "binance", "bybit"})


def servable_exchanges(settings: Settings) -> set[str]:
    """The venues this deployment's workers can trade on (see workers.worker.build_registry).

    The simulated venue only in simulation mode: its fills must never reach position management
    next to real ones. QuantConnect only in quantconnect mode. A direct exchange in direct mode, or
    in another mode when its account is configured (credentials or a base URL).
    """
    execution = settings.execution
    direct = execution.direct
    names = {name for name in direct.exchanges
             if execution.mode == "direct" or (name in direct.accounts
                                               and (direct.accounts[name].api_key or direct.accounts[name].base_url))}
    if execution.mode == "simulation":
        names.add("simulation")
        names.update(execution.simulation.venues)
    elif execution.mode == "quantconnect":
        names.add("quantconnect")
    return names


def exchange_problem(exchange: str | None, settings: Settings) -> str | None:
    """Why a signal naming `exchange` cannot be traded here, or None (no name: the mode's default)."""
    if exchange is None:
        return None
    servable = servable_exchanges(settings)
    if exchange in servable:
        return None
    if exchange not in KNOWN_EXCHANGES:
        return f"exchange: unknown exchange {_clip(repr(exchange))} (this deployment trades on: {', '.join(sorted(servable))})"
    return (f"exchange: {exchange} cannot be served in execution mode {settings.execution.mode} "
            f"(this deployment trades on: {', '.join(sorted(servable))})")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    data: dict[str, object] = {}
    for key, value in pairs:
        if key in data:
            raise InvalidSignal(f"malformed JSON: duplicate key {_clip(repr(key))}")
        data[key] = value
    return data


def _no_constant(name: str) -> object:
    raise InvalidSignal(f"malformed JSON: {name} is not a number")


def loads_strict(text: str) -> object:
    """JSON as RFC 8259 means it: duplicate keys and NaN/Infinity refused, numbers kept exact."""
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_float=Decimal, parse_constant=_no_constant)


def _check_timing(signal: Signal, settings: Settings, now: datetime, received_at: datetime | None) -> None:
    """Signal age (messaging.max_signal_age_s) and the start/expiry horizon (orders.max_*)."""
    max_age = settings.messaging.max_signal_age_s
    if signal.created_at is not None:
        if signal.created_at > now + timedelta(seconds=CLOCK_SKEW_S):
            raise InvalidSignal(f"created_at: {signal.created_at.isoformat()} is in the future")
        born, what = signal.created_at, "created_at"
    else:  # no created_at: the time it reached us (the stream entry's id; now for the API and CLI)
        born, what = received_at or now, "received"
    age = (now - born).total_seconds()
    if age > max_age:
        raise InvalidSignal(f"stale signal: {what} {age:.0f} s ago, older than messaging.max_signal_age_s "
                            f"({max_age} s); never traded")
    orders = settings.orders
    start_at = signal.execution.start_at if signal.execution else None
    if start_at is not None:
        if start_at.tzinfo is None:
            raise InvalidSignal("execution.start_at: timestamp must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
        if (start_at - now).total_seconds() > orders.max_start_delay_s:
            raise InvalidSignal(f"execution.start_at: {start_at.isoformat()} is further ahead than "
                                f"orders.max_start_delay_s ({orders.max_start_delay_s} s)")
    if signal.expire_at is not None:
        if (signal.expire_at - now).total_seconds() > orders.max_order_lifetime_s:
            raise InvalidSignal(f"expire_at: {signal.expire_at.isoformat()} is further ahead than "
                                f"orders.max_order_lifetime_s ({orders.max_order_lifetime_s} s)")
        if start_at is not None and signal.expire_at <= start_at:
            raise InvalidSignal("expire_at: the order would expire before execution.start_at")


def _check_defaults(signal: Signal, settings: Settings) -> None:
    """The configured defaults (orders.default_order_type, orders.time_in_force) must give an order
    that can exist: a limit order needs a price, GTD needs an expiry."""
    orders = settings.orders
    if signal.order_type is None and signal.limit_price is None and orders.default_order_type == "limit":
        raise InvalidSignal("limit_price: required (orders.default_order_type is limit and the signal names no order_type)")
    if signal.time_in_force is None and signal.expire_at is None and orders.time_in_force == "GTD":
        raise InvalidSignal("expire_at: required (orders.time_in_force is GTD and the signal names no time_in_force)")


def parse_signal(payload: str | bytes, settings: Settings, now: datetime | None = None,
                 received_at: datetime | None = None) -> Signal:
    """Validate a raw signal; raises InvalidSignal with a readable reason.

    `received_at` is when the signal reached us (a stream entry's append time): a signal without
    created_at is aged from it, so entries replayed long after they were published are not traded.
    """
    now = now or datetime.now(timezone.utc)
    limit = settings.messaging.max_payload_bytes
    if len(payload) > limit:  # bytes, or characters (at least as many bytes)
        raise InvalidSignal(f"payload too large: {len(payload)} {'bytes' if isinstance(payload, bytes) else 'characters'} "
                            f"(messaging.max_payload_bytes {limit})")
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidSignal(f"payload is not UTF-8 text (invalid byte at position {exc.start})") from None
    try:
        data = loads_strict(payload)
    except json.JSONDecodeError as exc:
        raise InvalidSignal(f"malformed JSON: {exc.msg}") from None
    except ValueError as exc:  # valid syntax Python refuses, e.g. an integer of more than 4300 digits
        raise InvalidSignal(f"malformed JSON: {_clip(str(exc).split(';')[0], 120)}") from None
    except RecursionError:
        raise InvalidSignal("malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidSignal(f"a signal is a JSON object, got {type(data).__name__}")
    try:
        signal = Signal.model_validate(data)
    except ValidationError as exc:
        raise InvalidSignal("; ".join(_describe(e) for e in exc.errors(include_url=False))) from None
    _check_defaults(signal, settings)
    problem = exchange_problem(signal.exchange, settings)
    if problem:
        raise InvalidSignal(problem)
    _check_timing(signal, settings, now, received_at)
    simulated = signal.exchange in ("simulation", *settings.execution.simulation.venues) or (
        signal.exchange is None and settings.execution.mode == "simulation")
    if simulated and simulated_market(signal.symbol) is None:
        raise InvalidSignal(f"symbol: unknown symbol {signal.symbol} on the simulated exchange")
    return signal


@dataclass(frozen=True)
class StartResult:
    order_id: str
    created: bool  # False: the order already existed (duplicate delivery)


def _search_attributes(signal: Signal) -> TypedSearchAttributes:
    pairs = [SearchAttributePair(search_attributes.ORDER_STATE, "created"),
             SearchAttributePair(search_attributes.SYMBOL, signal.symbol),
             SearchAttributePair(search_attributes.STRATEGY_ID, signal.strategy_id)]
    if signal.exchange:
        pairs.append(SearchAttributePair(search_attributes.EXCHANGE, signal.exchange))
    return TypedSearchAttributes(pairs)


# Temporal answers that no retry can change: a malformed or oversized request, a namespace that does
# not exist. Everything else (unavailable, deadline, throttled, internal) may pass and is retried.
PERMANENT_START_ERRORS = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.NOT_FOUND,
                                    RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.OUT_OF_RANGE,
                                    RPCStatusCode.UNIMPLEMENTED})


async def start_order(client: Client, settings: Settings, signal: Signal) -> StartResult:
    """Start the order's workflow once; an existing one (running or finished) counts as success.

    Raises UnstartableSignal when Temporal refuses for good, RPCError (or a connection error) when
    a retry may succeed.
    """
    # A signal naming an execution algorithm is a parent order; its children are OrderWorkflows.
    parent = signal.execution is not None and signal.execution.algo is not None
    try:
        await client.start_workflow(
            PARENT_WORKFLOW_TYPE if parent else WORKFLOW_TYPE, ParentOrderInput(signal=signal) if parent else signal,
            id=signal.workflow_id, task_queue=settings.temporal.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=_search_attributes(signal),
            # What the Temporal UI shows for the order before it runs (encrypted with a payload key).
            static_summary=static_summary(signal), static_details=static_details(signal),
            request_eager_start=True,
        )
    except WorkflowAlreadyStartedError:
        return StartResult(signal.workflow_id, created=False)
    except RPCError as exc:
        if exc.status in PERMANENT_START_ERRORS:
            raise UnstartableSignal(f"Temporal refused to start the order ({exc.status.name}): "
                                    f"{_clip(exc.message, 300)}") from None
        raise
    return StartResult(signal.workflow_id, created=True)
