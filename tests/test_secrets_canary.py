"""Secrets never leave the environment: `tom dev` runs a direct venue (the Binance emulator) with a
unique canary value in every secret (API tokens, Redis password, venue key and secret, QuantConnect
token, Temporal API key, payload key), places, amends and cancels orders through the API, the signal
stream and the CLI, and then no canary is found in any process's output, any Temporal history,
anything in Redis, the DuckDB file or its tables, or any answer of the API or the CLI."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import httpx
import pytest
import redis as redis_sync
from temporalio.client import Client

from config.settings import load_settings
from tests.conftest import REPO, free_port, run_tom, stop_process, tom_process, wait_for_http


def canary(name: str) -> str:
    return f"CANARY{name}{uuid.uuid4().hex}"  # 40+ characters: long enough for an API token


SECRETS = {
    "TOM_API_TOKEN": canary("trade"),
    "TOM_CANARY_READ_TOKEN": canary("read"),
    "REDIS_PASSWORD": canary("redis"),
    "BINANCE_API_KEY": canary("binancekey"),
    "BINANCE_SECRET": canary("binancesecret"),
    "QC_API_KEY": canary("quantconnect"),
    "TEMPORAL_API_KEY": canary("temporal"),
    "TOM_PAYLOAD_KEY": canary("payload"),  # read by the payload codec where it exists
}


def forms(value: str) -> list[bytes]:
    """The secret as it could appear: raw, and base64-encoded at each of the three alignments
    (Temporal's JSON form of payloads is base64)."""
    raw = value.encode()
    found = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0:]
        found.append(encoded[:-4])  # the stable middle: the tail depends on what follows
    return found


def leaks(blob: bytes) -> list[str]:
    return [name for name, value in SECRETS.items() if any(form in blob for form in forms(value))]


def write_config(tmp_path: Path, emulator_url: str) -> Path:
    """local.yaml's stack on free ports, direct mode on the emulator; every secret a `${VAR}`."""
    base = load_settings(REPO / "config" / "local.yaml", env={})
    placeholder = {name: f"PLACEHOLDER{name}{'x' * 32}" for name in SECRETS}
    execution = base.execution.model_dump(mode="json")
    execution.update(mode="direct", direct={**execution["direct"], "exchanges": ["binance"], "accounts": {
        "binance": {"api_key": placeholder["BINANCE_API_KEY"], "secret": placeholder["BINANCE_SECRET"],
                    "base_url": emulator_url}}})
    execution["quantconnect"]["api_key"] = placeholder["QC_API_KEY"]
    settings = base.with_overrides(
        service={"host": "127.0.0.1", "port": free_port(), "api_tokens": {
            "trader": {"token": placeholder["TOM_API_TOKEN"], "scopes": ["read", "trade"]},
            "reader": {"token": placeholder["TOM_CANARY_READ_TOKEN"], "scopes": ["read"]}}},
        messaging={**base.messaging.model_dump(mode="json"), "host": "127.0.0.1", "port": free_port(),
                   "password": placeholder["REDIS_PASSWORD"]},
        database={"type": "duckdb", "path": str(tmp_path / "data" / "orders.duckdb")},
        # No temporal.api_key: an API key implies TLS, which the local dev server does not speak (the
        # TLS and key paths are tested in test_temporal_cloud.py); TEMPORAL_API_KEY stays in every
        # process's environment, so it is still searched for everywhere below.
        temporal={**base.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{free_port()}",
                  "ui_port": free_port()},
        execution=execution,
        orders={**base.orders.model_dump(mode="json"), "log_level": "DEBUG"},  # the most talkative logs
    )
    text = settings.to_yaml()
    for name, value in placeholder.items():
        text = text.replace(value, "${%s}" % name)
    assert "PLACEHOLDER" not in text and not leaks(text.encode())
    path = tmp_path / "canary.yaml"
    path.write_text(text)
    return path


def wait_until(check, what: str, timeout: float = 90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def redis_dump(client: redis_sync.Redis) -> bytes:
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"stream":
            value = client.xrange(key)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"string":
            value = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = client.smembers(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected Redis type {kind} of {key}")
        parts.append(repr((key, value)).encode())
    return b"\n".join(parts)


async def histories(address: str) -> tuple[bytes, int]:
    client = await Client.connect(address)
    blob, count = [], 0
    async for execution in client.list_workflows(""):
        history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
        blob += [event.SerializeToString() for event in history.events]
        blob.append(history.to_json().encode())
        count += 1
    return b"".join(blob), count


def test_no_secret_reaches_logs_histories_redis_the_database_or_answers(tmp_path):
    env = {**os.environ, **SECRETS}
    answers: list[bytes] = []
    emulator_port = free_port()
    emulator = tom_process(REPO / "config" / "local.yaml", "exchange-emulator", "--venue", "binance",
                           "--port", str(emulator_port), "--api-key", SECRETS["BINANCE_API_KEY"],
                           "--secret", SECRETS["BINANCE_SECRET"], log_path=tmp_path / "emulator.log")
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    config = write_config(tmp_path, emulator_url)
    settings = load_settings(config, env=SECRETS)
    api = f"http://127.0.0.1:{settings.service.port}"
    trade = {"Authorization": f"Bearer {SECRETS['TOM_API_TOKEN']}"}
    read = {"Authorization": f"Bearer {SECRETS['TOM_CANARY_READ_TOKEN']}"}
    data_dir = tmp_path / "data"
    dev_out = open(tmp_path / "dev.out", "wb")
    dev = subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(config), "dev",
                            "--data-dir", str(data_dir)], cwd=tmp_path, env=env, stdout=dev_out,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"{emulator_url}/_emulator/health", proc=emulator)
        wait_until(lambda: b"stop with Ctrl-C" in (tmp_path / "dev.out").read_bytes() or dev.poll() is not None,
                   "tom dev to start", timeout=120)
        assert dev.poll() is None, (tmp_path / "dev.out").read_text()

        # Redis refuses a client without the password.
        with pytest.raises(redis_sync.RedisError, match="(?i)auth"):
            redis_sync.Redis(port=settings.messaging.port).ping()
        store = redis_sync.Redis(port=settings.messaging.port, password=SECRETS["REDIS_PASSWORD"])

        # Orders through the API: a market order that fills, a resting limit order amended then cancelled.
        def post(signal_id: str, **fields) -> str:
            body = {"signal_id": signal_id, "strategy_id": "canary", "symbol": "ETH/USDT", "side": "buy",
                    "quantity": "0.01", **fields}
            response = httpx.post(f"{api}/signals", json=body, headers=trade, timeout=30)
            answers.append(response.content)
            assert response.status_code == 202, response.text
            return response.json()["order_id"]

        run_id = uuid.uuid4().hex[:8]
        market = post(f"canary-market-{run_id}")
        resting = post(f"canary-limit-{run_id}", order_type="limit", limit_price="1500.00")

        def state(order_id: str, headers=read) -> str | None:
            response = httpx.get(f"{api}/orders/{order_id}", headers=headers, timeout=30)
            answers.append(response.content)
            return response.json().get("state") if response.status_code == 200 else None

        wait_until(lambda: state(resting) == "accepted", "the limit order to rest")
        amended = httpx.patch(f"{api}/orders/{resting}", json={"limit_price": "1490.00"}, headers=trade, timeout=60)
        answers.append(amended.content)
        assert amended.status_code == 200, amended.text
        cancelled = httpx.post(f"{api}/orders/{resting}/cancel", json={"reason": "canary"}, headers=trade, timeout=60)
        answers.append(cancelled.content)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled", cancelled.text

        # Through the signal stream (the consumer), and a malformed signal for the dead-letter path.
        streamed = f"canary-stream-{run_id}"
        store.xadd("signals", {"signal": json.dumps({"signal_id": streamed, "strategy_id": "canary",
                                                     "symbol": "ETH/USDT", "side": "sell", "quantity": "0.01"})})
        store.xadd("signals", {"signal": "{not json"})
        for order_id in (market, f"order-{streamed}"):
            wait_until(lambda: state(order_id) == "filled", f"{order_id} to fill")

        # Refusals and errors: none names a token.
        for method, path, headers in (("GET", "/orders", {}), ("GET", "/orders", {"Authorization": "Bearer nope"}),
                                      ("POST", "/signals", read), ("GET", "/orders/order-none", read),
                                      ("PATCH", f"/orders/{market}", trade)):
            response = httpx.request(method, f"{api}{path}", headers=headers, json={"quantity": "1"}, timeout=60)
            answers.append(response.content)
            assert response.status_code in (401, 403, 404, 409), (path, response.status_code, response.text)
        for path in ("/orders", "/positions", "/report", "/openapi.json", "/readyz", "/metrics", "/healthz"):
            response = httpx.get(f"{api}{path}", headers=read, timeout=30)
            answers.append(response.content)
            assert response.status_code == 200, (path, response.text)
        wait_until(lambda: {market, resting, f"order-{streamed}"} <= {
            o["order_id"] for o in httpx.get(f"{api}/orders", headers=read, timeout=30).json()["orders"]},
            "the recorder to store the orders")

        # The CLI, with the token from the environment, and its error when the token is wrong.
        for args, token in ((("orders", "--json"), SECRETS["TOM_API_TOKEN"]), (("report",), SECRETS["TOM_API_TOKEN"]),
                            (("status", market), SECRETS["TOM_API_TOKEN"]), (("orders",), "x" * 40)):
            result = run_tom(config, *args, env={**SECRETS, "TOM_API_TOKEN": token})
            answers.append((result.stdout + result.stderr).encode())
            assert result.returncode == (1 if token == "x" * 40 else 0), result.stderr
        assert market.encode() in b"".join(answers)
        wrong_password = run_tom(config, "submit", "--symbol", "ETH/USDT", "--side", "buy", "--quantity", "0.01",
                                 "--via", "stream", env={**SECRETS, "REDIS_PASSWORD": "not-the-password"})
        assert wrong_password.returncode == 1 and "requires a password" in wrong_password.stderr, wrong_password.stderr
        assert len(wrong_password.stderr.strip().splitlines()) == 1, wrong_password.stderr
        answers.append((wrong_password.stdout + wrong_password.stderr).encode())

        redis_blob = redis_dump(store)
        assert market.encode() in redis_blob and b"signals.dead" in redis_blob  # the dump holds the data
        history_blob, workflows = asyncio.run(histories(settings.temporal.address))
        assert workflows >= 3 and market.encode() in history_blob
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGINT)
            dev.wait(90)
        dev_out.close()
        stop_process(emulator)
    assert dev.returncode == 0, (tmp_path / "dev.out").read_text()[-3000:]

    found = {}
    logs = {p.name: p.read_bytes() for p in sorted((data_dir / "logs").glob("*.log"))}
    logs["tom dev output"] = (tmp_path / "dev.out").read_bytes()
    assert {"temporal.log", "redis.log", "worker.log", "consumer.log", "api.log"} <= set(logs)
    assert b"DEBUG" in logs["worker.log"]  # the most talkative level was on
    for name, blob in logs.items():
        found[f"log {name}"] = leaks(blob)
    found["API and CLI answers"] = leaks(b"\n".join(answers))
    found["Redis"] = leaks(redis_blob)
    found["Redis append-only files"] = leaks(b"".join(p.read_bytes() for p in (data_dir / "redis").rglob("*")
                                                       if p.is_file()))
    found["Temporal histories"] = leaks(history_blob)
    database = Path(settings.database.path)
    found["DuckDB files"] = leaks(b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*")))
    with duckdb.connect(str(database), read_only=True) as db:
        tables = [row[0] for row in db.execute("select table_name from information_schema.tables").fetchall()]
        assert {"orders", "order_events", "fills", "dead_letters"} <= set(tables)
        rows = b"".join(repr(db.execute(f'select * from "{t}"').fetchall()).encode() for t in tables)
    assert market.encode() in rows
    found["DuckDB tables"] = leaks(rows)
    leaked = {where: names for where, names in found.items() if names}
    assert not leaked, f"secrets found: {leaked}"


def test_the_search_finds_a_secret_raw_or_base64_encoded_at_any_offset():
    secret = SECRETS["REDIS_PASSWORD"]
    for prefix in (b"", b"a", b"ab", b"abc"):
        assert leaks(base64.b64encode(prefix + secret.encode() + b"tail")) == ["REDIS_PASSWORD"]
        assert leaks(prefix + secret.encode()) == ["REDIS_PASSWORD"]
    assert leaks(base64.b64encode(b"no secret here" * 8)) == []


def test_log_lines_carrying_a_configured_secret_are_redacted(tmp_path):
    """The formatter every process logs through replaces configured secrets, in messages, their
    arguments and exception text (also as URL-quoted in a Redis URL)."""
    import logging

    from workers.runtime import RedactingFormatter, secret_values

    settings = load_settings(write_config(tmp_path, "http://127.0.0.1:1"), env={**SECRETS, "REDIS_PASSWORD": "p@ss/word-1"})
    values = secret_values(settings)
    assert SECRETS["BINANCE_SECRET"] in values and "p%40ss%2Fword-1" in values
    formatter = RedactingFormatter(values, "%(message)s")
    try:
        raise RuntimeError(f"connect redis://:p%40ss%2Fword-1@h failed for {SECRETS['TOM_API_TOKEN']}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key %s", (SECRETS["BINANCE_API_KEY"],),
                                   sys.exc_info())
    line = formatter.format(record)
    assert "key ***" in line and "redis://:***@h" in line and "RuntimeError" in line
    assert not leaks(line.encode()) and "p%40ss" not in line
