"""Configuration: both shipped files load; every bad file fails in one line naming file and key."""
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, load_settings, resolve_config_path

REPO = Path(__file__).resolve().parent.parent
DEV_ENV = {"QC_API_KEY": "qc-secret-123", "QC_PROJECT_ID": "42"}


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load_with_every_brief_key():
    local = load_settings(REPO / "config" / "local.yaml", env={})
    assert local.environment == "local" and local.service.port == 8004
    assert local.database.type == "duckdb" and local.messaging.type == "redis"
    assert local.execution.mode == "simulation" and local.execution.simulation.slippage == 0.0005
    assert local.account_limits.max_daily_orders == 50 and local.order_cache.ttl == 3600
    assert local.orders.retry_attempts == 3 and local.orders.execution_timeout_ms == 5000
    assert local.temporal.task_queue == "orders"
    dev = load_settings(REPO / "config" / "dev.yaml", env=DEV_ENV)
    assert dev.environment == "development" and dev.database.type == "bigquery"
    assert (dev.database.project, dev.database.dataset) == ("development", "order_management")
    assert dev.execution.mode == "quantconnect" and dev.execution.quantconnect.project_id == "42"
    assert dev.execution.quantconnect.api_key.get_secret_value() == "qc-secret-123"
    assert dev.account_limits.max_order_value == 5000
    assert (dev.messaging.type, dev.messaging.project, dev.messaging.topic_prefix) == ("pubsub", "development", "dev_")


@pytest.mark.parametrize("text, expected", [
    ("service:\n  port: [1\n", "YAML error at line"),
    ("orders:\n  retry_attempt: 3\n", "orders.retry_attempt: unknown key"),
    ("surprise: 1\n", "surprise: unknown key"),
    ("service:\n  port: lots\n", "service.port: Input should be a valid integer"),
    ("service:\n  port: 70000\n", "service.port: Input should be less than or equal to 65535"),
    ("execution:\n  mode: teleport\n", "execution.mode: Input should be 'simulation', 'quantconnect' or 'direct'"),
    ("account_limits:\n  max_daily_orders: 0\n", "account_limits.max_daily_orders: Input should be greater than or equal to 1"),
    ("orders:\n  log_level: LOUD\n", "orders.log_level"),
    ("execution:\n  mode: quantconnect\n", "quantconnect.api_key and project_id"),
    ("- just\n- a list\n", "expected a mapping"),
    # Settings no order can survive, refused at load rather than discovered one order at a time.
    ("orders:\n  max_slippage_bps: 10000\n", "orders.max_slippage_bps: Input should be less than 10000"),
    ("orders:\n  max_slippage_bps: -1\n", "orders.max_slippage_bps"),
    ("orders:\n  retry_delay_ms: 0\n", "orders.retry_delay_ms"),
    ("orders:\n  rate_limit_orders: 0\n", "orders.rate_limit_orders"),
    ("orders:\n  rate_limit_window_ms: 0\n", "orders.rate_limit_window_ms"),
    ("orders:\n  execution_timeout_ms: 0\n", "orders.execution_timeout_ms"),
    ("account_limits:\n  min_order_size: 2000\n  max_order_value: 1000\n",
     "account_limits.min_order_size: above account_limits.max_order_value"),
    ("orders:\n  max_start_delay_s: -1\n", "orders.max_start_delay_s"),
    ("orders:\n  max_order_lifetime_s: 0\n", "orders.max_order_lifetime_s"),
    ("messaging:\n  max_signal_age_s: 0\n", "messaging.max_signal_age_s"),
    ("messaging:\n  max_payload_bytes: 10\n", "messaging.max_payload_bytes"),
    ("service:\n  max_request_bytes: 10\n", "service.max_request_bytes"),
    # Keys this release cannot honour are refused, never accepted and ignored.
    ("orders:\n  track_execution_metrics: false\n", "orders.track_execution_metrics: false is not supported"),
    ("database:\n  type: bigquery\n  project: p\n", "bigquery needs project and dataset"),
    ("database:\n  type: bigquery\n  project: p\n  dataset: a-b\n", "dataset: letters, digits and underscores"),
    ("database:\n  type: bigquery\n  project: p\n  dataset: d\n  emulator_host: localhost\n",
     "emulator_host: an endpoint such as http://"),
    ("database:\n  emulator_host: http://localhost:9050\n", "database.emulator_host: only used by database.type bigquery"),
    ("database:\n  type: bigquery\n  project: p\n  dataset: d\n  path: x.duckdb\n", "path is the DuckDB file"),
    ("database:\n  project: p\n", "database.project: only used by database.type bigquery"),
    ("messaging:\n  type: pubsub\n", "messaging.project: required by messaging.type pubsub"),
    ("messaging:\n  type: pubsub\n  project: p\n  claim_idle_ms: 5000\n", "messaging.claim_idle_ms: with pubsub it is the subscription's ack deadline"),
    ("messaging:\n  type: pubsub\n  project: p\n  topic_prefix: 9x\n", "messaging.topic_prefix"),
    ("messaging:\n  project: p\n", "messaging.project: only used by messaging.type pubsub"),
    ("messaging:\n  flow_control_max_messages: 5\n", "messaging.flow_control_max_messages: only used by messaging.type pubsub"),
    ("messaging:\n  topic_prefix: dev_\n", "messaging.topic_prefix: only used by messaging.type pubsub"),
])
def test_bad_files_fail_with_one_line_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


def test_missing_file_and_unset_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"execution\.quantconnect\.api_key: environment variable QC_API_KEY is not set"):
        load_settings(REPO / "config" / "dev.yaml", env={})


def test_interpolation_defaults_and_types(tmp_path):
    path = write(tmp_path, "service:\n  host: ${HOST:-0.0.0.0}\n  port: ${PORT:-9000}\n"
                           "temporal:\n  address: ${T_HOST}:${T_PORT:-7233}\n")
    settings = load_settings(path, env={"T_HOST": "temporal.svc"})
    assert settings.service.host == "0.0.0.0" and settings.service.port == 9000
    assert settings.temporal.address == "temporal.svc:7233"
    assert load_settings(path, env={"T_HOST": "x", "PORT": "9100"}).service.port == 9100


def test_config_path_selection(monkeypatch, tmp_path):
    monkeypatch.delenv("CONFIG_PATH", raising=False)
    assert resolve_config_path(None).name == "local.yaml"
    monkeypatch.setenv("CONFIG_PATH", "/from/env.yaml")
    assert str(resolve_config_path(None)) == "/from/env.yaml"
    assert str(resolve_config_path("/from/flag.yaml")) == "/from/flag.yaml"  # --config wins


def run_tom(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60)


def test_cli_reports_config_errors_in_one_line_without_traceback_or_secrets(tmp_path):
    path = write(tmp_path, "execution:\n  quantconnect:\n    api_key: ${QC_API_KEY}\n    project_id: 7\n"
                           "service:\n  port: nope\n")
    result = run_tom("--config", str(path), "worker", env={"QC_API_KEY": "super-secret-value"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "service.port" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr and "super-secret-value" not in result.stderr + result.stdout


def test_secrets_are_masked_in_settings_repr():
    settings = load_settings(REPO / "config" / "dev.yaml", env=DEV_ENV)
    assert "qc-secret-123" not in repr(settings) and "qc-secret-123" not in str(settings.model_dump())


def _keys(model, prefix: str = "") -> list[str]:
    """Every dotted key of a settings model (a dict of sub-settings counts as its own key)."""
    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{key}.")
        else:
            keys.append(key)
    return keys


def test_every_config_key_is_documented_in_the_readme_table():
    """The README's configuration table names every key the settings accept: none is unexplained."""
    from config.settings import Settings

    readme = (REPO / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    from config.settings import ExchangeSettings

    keys = _keys(Settings) + [f"execution.direct.accounts.{k}" for k in _keys(ExchangeSettings)]
    rows = {line.split("|")[1] for line in table.splitlines()}
    accounts_row = next(line for line in table.splitlines() if line.startswith("| `execution.direct.accounts`"))

    def documented(key: str) -> bool:
        if key.startswith("execution.direct.accounts."):
            return f"`{key.rsplit('.', 1)[-1]}`" in accounts_row
        return any(f"`{key}`" in row for row in rows)

    missing = [key for key in keys if not documented(key)]
    assert not missing, f"keys missing from the README configuration table: {missing}"


def test_configured_defaults_that_cannot_make_an_order_refuse_the_signal():
    """orders.default_order_type limit and orders.time_in_force GTD are honoured: a signal they
    cannot complete (no price, no expiry) is refused with a reason naming the key."""
    import json

    from workers.intake import InvalidSignal, parse_signal

    base = load_settings(REPO / "config" / "local.yaml", env={})
    orders = base.orders.model_dump(mode="json")
    signal = json.dumps({"signal_id": "d1", "strategy_id": "s", "symbol": "BTC/USDT", "side": "buy", "quantity": "0.01"})
    with pytest.raises(InvalidSignal, match="orders.default_order_type is limit"):
        parse_signal(signal, base.with_overrides(orders={**orders, "default_order_type": "limit"}))
    with pytest.raises(InvalidSignal, match="orders.time_in_force is GTD"):
        parse_signal(signal, base.with_overrides(orders={**orders, "time_in_force": "GTD"}))
    assert parse_signal(signal, base).quantity
