"""`tom dev` as a user runs it: a subprocess that brings the stack up, runs the demo, and stops
cleanly on SIGINT or SIGTERM leaving no process behind."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from config.settings import load_settings
from tests.conftest import REPO, free_port


@pytest.fixture
def dev_config(tmp_path) -> Path:
    base = load_settings(REPO / "config" / "local.yaml", env={})
    settings = base.with_overrides(
        service={"host": "127.0.0.1", "port": free_port()},
        messaging={**base.messaging.model_dump(mode="json"), "host": "127.0.0.1", "port": free_port()},
        database={"type": "duckdb", "path": str(tmp_path / "data" / "orders.duckdb")},
        temporal={**base.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{free_port()}",
                  "ui_port": free_port()},
        execution={**base.execution.model_dump(mode="json"),
                   "simulation": {**base.execution.simulation.model_dump(mode="json"), "delay_ms": 5}},
    )
    path = tmp_path / "dev.yaml"
    path.write_text(settings.to_yaml())
    return path


def start_dev(config: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "--config", str(config), "dev", "--data-dir", str(tmp_path / "data"),
         *extra], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"never saw {marker!r}; output:\n{''.join(seen)}")


def stop_and_check_no_orphans(proc: subprocess.Popen, sig: int) -> str:
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 5, [p.name() for p in tree]  # temporal, redis, worker, consumer, api
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    return output


def test_dev_stack_runs_the_demo_and_stops_cleanly_on_ctrl_c(dev_config, tmp_path):
    settings = load_settings(dev_config)
    proc = start_dev(dev_config, tmp_path, "--demo", "--demo-orders", "12")
    try:
        output = read_until(proc, "tom dev: see the orders")
        assert "Temporal UI     http://localhost:" in output
        assert f"API             http://127.0.0.1:{settings.service.port}" in output
        summary = next(line for line in output.splitlines() if line.startswith("demo:") and "terminal" in line)
        done, total = summary.split()[1].split("/")
        assert done == total and int(total) == 11, summary  # one of the 12 is a malformed signal
        # ... and ends with the report's headline figures, per quote currency (the demo trades USDT pairs).
        headline = output[output.index("demo report ("):].splitlines()
        # Parents: the demo's split order and its TWAP, and any other order the router split across
        # the two venues (it depends on the thin venue's book at that moment); each is listed above.
        parents = re.match(r"orders \d+ \(\+(\d+) parents\); states: ", headline[1].strip())
        assert parents, output
        listed = [line for line in output.splitlines() if re.match(r"\s+(split|twap|iceberg) order-demo-", line)]
        assert int(parents.group(1)) == len(listed) >= 2, output
        # `tom dev` trades on two simulated venues: the demo's split order has children on both, its
        # TWAP three children, each listed under the summary.
        assert "  venues          simulation (taker 5 bps, 10 levels), simulation-b (taker 2 bps, 3 levels" in output
        split = next(line for line in output.splitlines() if "-split: " in line)
        assert re.search(r"split order-demo-\w+-split: (filled|expired) [0-9.]+/[0-9.]+, \d+ children on "
                         r"simulation, simulation-b: ", split.strip()), split
        twap = next(line for line in output.splitlines() if "-twap: " in line)
        assert re.search(r"twap order-demo-\w+-twap: filled ([0-9.]+)/\1, 3 children on ", twap.strip()), twap
        assert headline[2].strip().startswith("USDT: success ") and "total cost" in headline[2], output
        assert httpx.get(f"http://127.0.0.1:{settings.service.port}/healthz").status_code == 200
        # A second stack on the same ports refuses to start, in one line, and starts nothing.
        second = start_dev(dev_config, tmp_path)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 1 and "already in use" in out, out
    finally:
        if proc.poll() is None:
            output = stop_and_check_no_orphans(proc, signal.SIGINT)
            assert "stopped api, consumer, worker, redis, temporal" in output


def test_dev_stack_stops_on_sigterm_and_keeps_state_across_restart(dev_config, tmp_path):
    settings = load_settings(dev_config)
    proc = start_dev(dev_config, tmp_path)
    read_until(proc, "stop with Ctrl-C")
    # Its Redis requires the per-run password only its own processes were given.
    with pytest.raises(redis.RedisError, match="(?i)auth"):
        redis.Redis(port=settings.messaging.port).ping()
    signal_body = {"signal_id": "restart-1", "strategy_id": "t", "symbol": "ETH/USDT", "side": "buy",
                   "quantity": "0.2", "order_type": "limit", "limit_price": "100.00"}
    url = f"http://127.0.0.1:{settings.service.port}"
    assert httpx.post(f"{url}/signals", json=signal_body).status_code == 202
    stop_and_check_no_orphans(proc, signal.SIGTERM)

    proc = start_dev(dev_config, tmp_path)
    try:
        read_until(proc, "stop with Ctrl-C")
        again = httpx.post(f"{url}/signals", json=signal_body)
        assert again.status_code == 202 and again.json()["created"] is False  # the order survived the restart
        order = httpx.get(f"{url}/orders/order-restart-1").json()
        assert order["state"] in ("accepted", "validated", "submitted")
    finally:
        stop_and_check_no_orphans(proc, signal.SIGINT)
