"""CPU and memory of each platform process under a demo load: what k8s/dev sizes its requests from.

    python -m bench.footprint [--orders 400] [--rate 20]

Runs `tom dev` (Temporal dev server, Redis, worker, consumer, API as separate processes, on free
ports) with a copy of config/local.yaml, feeds `tom demo --orders N --rate R` through the signals
stream (consumer -> workflow -> worker -> recorder in the API), and samples every 0.5 s the resident
memory (RSS) and CPU of the worker, consumer and API processes. Prints one JSON object: per role,
peak RSS in MiB, mean and peak CPU (share of one core) over the load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from config.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
ROLES = {"worker": "worker", "consume": "consumer", "api": "api"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def role_processes(dev: psutil.Process) -> dict[str, psutil.Process]:
    found = {}
    for child in dev.children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "workers.cli" in cmdline and cmdline[-1] in ROLES:
            found[ROLES[cmdline[-1]]] = child
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tom-footprint-"))
    base = load_settings(REPO / "config" / "local.yaml", env={})
    settings = base.with_overrides(
        service={**base.service.model_dump(mode="json"), "port": free_port()},
        messaging={**base.messaging.model_dump(mode="json"), "port": free_port()},
        temporal={**base.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{free_port()}",
                  "ui_port": free_port()},
        database={"type": "duckdb", "path": str(workdir / "orders.duckdb")},
        account_limits={**base.account_limits.model_dump(mode="json"), "max_daily_orders": 100_000},
    )
    config = workdir / "local.yaml"
    config.write_text(settings.to_yaml())
    tom = [sys.executable, "-m", "workers.cli", "--config", str(config)]
    dev = subprocess.Popen([*tom, "dev", "--data-dir", str(workdir / "data")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    samples: dict[str, list[tuple[float, float]]] = {role: [] for role in ROLES.values()}
    try:
        deadline = time.time() + 120
        procs: dict[str, psutil.Process] = {}
        while len(procs) < len(ROLES) and time.time() < deadline:
            procs = role_processes(psutil.Process(dev.pid))
            time.sleep(0.5)
        time.sleep(5)  # past start-up (imports, connections)
        demo = subprocess.Popen([*tom, "demo", "--orders", str(args.orders), "--rate", str(args.rate),
                                 "--timeout", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = {role: (p.cpu_times(), time.time()) for role, p in procs.items()}
        while demo.poll() is None:
            time.sleep(0.5)
            for role, proc in procs.items():
                times, at = proc.cpu_times(), time.time()
                before, then = last[role]
                cpu = (times.user + times.system - before.user - before.system) / (at - then)
                last[role] = (times, at)
                samples[role].append((proc.memory_info().rss / 2**20, cpu))
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        try:
            dev.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
    report = {role: {"peak_rss_mib": round(max(r for r, _ in s), 1),
                     "mean_cpu": round(sum(c for _, c in s) / len(s), 2),
                     "peak_cpu": round(max(c for _, c in s), 2)} for role, s in samples.items() if s}
    print(json.dumps({"orders": args.orders, "rate": args.rate, "demo_exit": demo.returncode, **report}))


if __name__ == "__main__":
    main()
