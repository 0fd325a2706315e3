"""`tom exchange-emulator` processes for tests: start, drive through the admin API, stop."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO, free_port, stop_process, tom_process, wait_for_http

CONFIG = REPO / "config" / "local.yaml"
API_KEY, SECRET = "emulator-key", "emulator-secret"


@dataclass
class Emulator:
    venue: str
    url: str
    log: Path

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/_emulator/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def fault(self, **spec: Any) -> None:
        self.admin("POST", "faults", json=spec)

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def reset(self) -> None:
        self.admin("POST", "reset")

    def shape(self, **settings: Any) -> Any:
        """Shape the venue's book (depth_levels, self_trade_expiry) until the next reset."""
        return self.admin("POST", "book", json=settings)

    def trade_through(self, client_order_id: str) -> Any:
        """Fill a resting order at the venue now, at its limit price (unseen by the platform until it looks)."""
        return self.admin("POST", "trade-through", json={"client_order_id": client_order_id})

    def orders(self) -> Any:
        return self.admin("GET", "orders")

    def stats(self, window_ms: int = 1000, log: bool = False) -> Any:
        return self.admin("GET", f"stats?window_ms={window_ms}" + ("&log=1" if log else ""))

    def account(self, **overrides: Any) -> dict[str, Any]:
        """The `execution.direct.accounts.<venue>` config block that points a worker here."""
        return {"api_key": API_KEY, "secret": SECRET, "base_url": self.url, **overrides}


@contextlib.contextmanager
def running_emulators(log_dir: Path, venues: tuple[str, ...] = ("binance", "bybit")) -> Iterator[dict[str, Emulator]]:
    procs, out = [], {}
    try:
        for venue in venues:
            port, log = free_port(), log_dir / f"{venue}.log"
            proc = tom_process(CONFIG, "exchange-emulator", "--venue", venue, "--port", str(port), log_path=log)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/_emulator/health", timeout=30, proc=proc)
            out[venue] = Emulator(venue, url, log)
        yield out
    finally:
        for proc in procs:
            stop_process(proc)
    for proc in procs:
        assert proc.returncode == 0  # SIGTERM is a clean stop
