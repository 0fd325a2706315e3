"""The namespace the platform needs: its Keyword search attributes, checked and registered.

Orders set `OrderState`, `Symbol`, `Exchange`, `StrategyId` and `ParentOrderId` on every
transition; a namespace without one of them fails every workflow task that upserts it (the order
stalls, retried forever). So `tom worker` checks before it polls and refuses to start with one line
naming what is missing, and `tom temporal-setup` registers them (a self-hosted cluster or the dev
server, through the operator API). Temporal Cloud does not take search attributes through that API:
there the command prints the `tcld` line that does.
"""
from __future__ import annotations

import asyncio
import logging

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from workers.cli import UserError
from workers.runtime import SEARCH_ATTRIBUTES, connect_temporal

log = logging.getLogger("tom.temporal_setup")
KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def search_attribute_problems(client: Client, namespace: str) -> tuple[list[str], list[str]]:
    """(missing, wrong type): the platform's attributes absent from the namespace, and those
    registered with a type other than Keyword."""
    try:
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    except RPCError as exc:  # an unknown namespace, or credentials that may not read it
        raise UserError(f"namespace {namespace}: cannot list its search attributes "
                        f"({exc.status.name}: {exc.message})") from None
    custom = dict(listed.custom_attributes)
    missing = [name for name in SEARCH_ATTRIBUTES if name not in custom]
    wrong = [name for name in SEARCH_ATTRIBUTES if name in custom and custom[name] != KEYWORD]
    return missing, wrong


def refusal(namespace: str, missing: list[str], wrong: list[str]) -> str | None:
    """The one line `tom worker` refuses with, or None when the namespace is ready."""
    parts = []
    if missing:
        parts.append(f"missing search attributes {', '.join(missing)}")
    if wrong:
        parts.append(f"search attributes {', '.join(wrong)} are not Keyword")
    if not parts:
        return None
    return f"namespace {namespace}: {'; '.join(parts)} (register them with `tom temporal-setup`)"


async def require_search_attributes(client: Client, namespace: str) -> None:
    message = refusal(namespace, *await search_attribute_problems(client, namespace))
    if message:
        raise UserError(message)


def tcld_command(namespace: str, names: list[str]) -> str:
    flags = " ".join(f"--search-attribute {name}=Keyword" for name in names)
    return f"tcld namespace search-attributes add --namespace {namespace} {flags}"


async def setup(settings: Settings, check_only: bool) -> str:
    namespace = settings.temporal.namespace
    try:
        client = await asyncio.wait_for(connect_temporal(settings), 15)
    except Exception as exc:
        raise UserError(f"cannot reach Temporal at {settings.temporal.address} ({type(exc).__name__}: {exc})") from None
    missing, wrong = await search_attribute_problems(client, namespace)
    if check_only and (missing or wrong):
        raise UserError(refusal(namespace, missing, wrong))
    if wrong:  # a type cannot be changed in place: an operator decision, never ours
        raise UserError(f"namespace {namespace}: search attributes {', '.join(wrong)} are not Keyword; "
                        "remove them and run this again")
    if not missing:
        return f"namespace {namespace}: search attributes {', '.join(SEARCH_ATTRIBUTES)} are registered (Keyword)"
    try:
        await client.operator_service.add_search_attributes(AddSearchAttributesRequest(
            namespace=namespace, search_attributes={name: KEYWORD for name in missing}))
    except RPCError as exc:
        if exc.status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED):
            raise UserError(f"namespace {namespace}: the operator API refused ({exc.status.name}); on "
                            f"Temporal Cloud run: {tcld_command(namespace, missing)}") from None
        raise UserError(f"namespace {namespace}: registering {', '.join(missing)} failed: {exc.message}") from None
    # Registration is asynchronous on some visibility stores: report only what is listed.
    for _ in range(50):
        still, _ = await search_attribute_problems(client, namespace)
        if not still:
            return f"namespace {namespace}: registered {', '.join(missing)} (Keyword)"
        await asyncio.sleep(0.2)
    raise UserError(f"namespace {namespace}: {', '.join(still)} not listed yet after registering; run again")


def run(settings: Settings, args) -> int:
    print(asyncio.run(setup(settings, getattr(args, "check", False))))
    return 0
