"""Signal intake shared by the stream consumer, the HTTP API and `tom submit`.

`parse_signal` turns a raw payload into a `Signal` or a reason a person understands;
`start_order` starts its OrderWorkflow idempotently: the workflow id is `order-<signal_id>` and
the id-reuse policy refuses a second run, so a signal delivered twice (even after its order
finished) makes exactly one order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from config.settings import Settings
from oms.markets import simulated_market
from oms.models import Signal
from workers.runtime import WORKFLOW_TYPE

ABSURD = Decimal("1e12")  # no real order has a quantity or price this large


class InvalidSignal(Exception):
    """The payload cannot become an order; the message says why."""


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


def known_exchanges(settings: Settings) -> set[str]:
    names = {"simulation", *settings.execution.direct.exchanges}
    if settings.execution.mode == "quantconnect":
        names.add("quantconnect")
    return names


def parse_signal(payload: str | bytes, settings: Settings) -> Signal:
    """Validate a raw signal; raises InvalidSignal with a readable reason."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSignal(f"malformed JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
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
    for name, value in (("quantity", signal.quantity), ("limit_price", signal.limit_price),
                        ("reference_price", signal.reference_price)):
        if value is not None and value >= ABSURD:
            shown = str(value) if len(str(value)) <= 60 else f"{value:.6E}"
            raise InvalidSignal(f"{name}: {shown} is not a plausible value")
    exchanges = known_exchanges(settings)
    if signal.exchange is not None and signal.exchange not in exchanges:
        raise InvalidSignal(f"exchange: unknown exchange {signal.exchange!r} (known: {', '.join(sorted(exchanges))})")
    simulated = signal.exchange == "simulation" or (signal.exchange is None and settings.execution.mode == "simulation")
    if simulated and simulated_market(signal.symbol) is None:
        raise InvalidSignal(f"symbol: unknown symbol {signal.symbol} on the simulated exchange")
    return signal


@dataclass(frozen=True)
class StartResult:
    order_id: str
    created: bool  # False: the order already existed (duplicate delivery)


def _search_attributes(signal: Signal) -> TypedSearchAttributes:
    key = SearchAttributeKey.for_keyword
    pairs = [SearchAttributePair(key("OrderState"), "created"), SearchAttributePair(key("Symbol"), signal.symbol),
             SearchAttributePair(key("StrategyId"), signal.strategy_id)]
    if signal.exchange:
        pairs.append(SearchAttributePair(key("Exchange"), signal.exchange))
    return TypedSearchAttributes(pairs)


async def start_order(client: Client, settings: Settings, signal: Signal) -> StartResult:
    """Start the order's workflow once; an existing one (running or finished) counts as success."""
    try:
        await client.start_workflow(
            WORKFLOW_TYPE, signal, id=signal.workflow_id, task_queue=settings.temporal.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=_search_attributes(signal),
            request_eager_start=True,
        )
    except WorkflowAlreadyStartedError:
        return StartResult(signal.workflow_id, created=False)
    return StartResult(signal.workflow_id, created=True)
