"""`tom worker --processes N`: N worker processes under one parent, so one machine's cores are all used.

One Python worker runs workflow code on one core (the GIL), so a worker process saturates at one
core whatever the machine. The parent starts N ordinary `tom worker` processes on the same task
queue (Temporal spreads tasks across pollers; the fill pollers and orphan sweeps elect one holder
per account through their Redis leases, so N processes never poll a venue N times), and does
nothing else:

- a child that dies (crash, OOM kill, SIGKILL) is replaced; one that keeps dying young is restarted
  with a doubling backoff (up to 30 s), so a failing dependency does not spin the CPU; a child that
  exits 2 found a configuration error (`tom`'s exit code for one), which no restart fixes: the
  parent stops the others and exits 2 with it;
- SIGTERM or SIGINT is forwarded to every child, each drains its in-flight tasks (the worker's own
  bounded drain), and the parent waits for them all; a child still alive past the drain bound is
  killed and the parent exits 1, else 0.

Each child gets its slot (1..N) in TOM_WORKER_SLOT, kept across restarts: with
`temporal.metrics_bind` set, child k serves its Prometheus metrics on the configured port + k - 1
(workers/observability.py); the parent serves none.

Children run in the parent's process group: a supervisor that is killed outright (SIGKILL to the
group, as a test or a container runtime does) takes its children with it. A child orphaned some
other way is an ordinary worker: its tasks are retried elsewhere, and nothing is placed twice
(client order ids and reconciliation), which is what makes restarting a child blindly safe.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workers.worker import DRAIN_MARGIN_S, GRACEFUL_SHUTDOWN

log = logging.getLogger("tom.supervisor")
# A child that lived this long before dying is restarted at once; younger deaths back off.
HEALTHY_AFTER_S = 30.0
MAX_BACKOFF_S = 30.0
POLL_S = 0.1
CONFIG_ERROR_EXIT = 2  # workers.cli's exit code for a configuration error


@dataclass
class Child:
    slot: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, command: list[str], processes: int) -> None:
        self.command = command
        self.processes = processes
        self.children: dict[int, Child] = {}
        self.backoff_s: dict[int, float] = {}
        self.restart_at: dict[int, float] = {}
        self.restarts = 0
        self.stopping = False
        self.fatal: int | None = None

    def _start(self, slot: int) -> None:
        process = subprocess.Popen(self.command, env={**os.environ, "TOM_WORKER_SLOT": str(slot)})
        self.children[slot] = Child(slot, process)
        log.info("worker %d started (pid %d)", slot, process.pid)

    def _on_exit(self, child: Child, code: int) -> None:
        del self.children[child.slot]
        lived = time.monotonic() - child.started
        backoff = 0.0 if lived >= HEALTHY_AFTER_S else min(MAX_BACKOFF_S, max(1.0, 2 * self.backoff_s.get(child.slot, 0.5)))
        self.backoff_s[child.slot] = backoff
        self.restart_at[child.slot] = time.monotonic() + backoff
        self.restarts += 1
        log.error("worker %d (pid %d) exited with %s after %.1f s: restarting in %.1f s",
                  child.slot, child.process.pid, code, lived, backoff)

    def request_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("%s: draining %d workers", signal.Signals(signum).name, len(self.children))
        self.stopping = True

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(1, self.processes + 1):
                self._start(slot)
            while not self.stopping:
                self._watch()
                time.sleep(POLL_S)
            return self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> None:
        for child in list(self.children.values()):
            code = child.process.poll()
            if code == CONFIG_ERROR_EXIT:
                log.error("worker %d (pid %d) found a configuration error: stopping all workers",
                          child.slot, child.process.pid)
                del self.children[child.slot]
                self.stopping, self.fatal = True, CONFIG_ERROR_EXIT
                return
            if code is not None:
                self._on_exit(child, code)
        now = time.monotonic()
        for slot, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[slot]
                self._start(slot)

    def _drain(self) -> int:
        for child in self.children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN.total_seconds() + DRAIN_MARGIN_S + 5
        failed = False
        for child in self.children.values():
            try:
                code = child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) still running past the drain bound: killed", child.slot,
                          child.process.pid)
                child.process.kill()
                child.process.wait()
                failed = True
                continue
            # Killed by the SIGTERM itself: a child still starting up, before its handler was set,
            # which holds no work to drain.
            if code not in (0, -signal.SIGTERM):
                log.error("worker %d (pid %d) exited with %s while draining", child.slot, child.process.pid, code)
                failed = True
        log.info("supervisor stopped (%d restarts)", self.restarts)
        if self.fatal is not None:
            return self.fatal
        return 1 if failed else 0


def child_command(config_path: Path, max_concurrent: int | None, with_consumer: bool) -> list[str]:
    command = [sys.executable, "-m", "workers.cli", "--config", str(config_path), "worker", "--processes", "1"]
    if max_concurrent is not None:
        command += ["--max-concurrent", str(max_concurrent)]
    if with_consumer:
        command.append("--with-consumer")
    return command
