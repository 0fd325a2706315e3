"""Observability of the worker (workers/observability.py): the Temporal SDK's Prometheus metrics on
`temporal.metrics_bind` (per worker slot), and JSON log lines that carry order_id, workflow_id and
run_id inside workflows and activities, secrets redacted."""
import asyncio
import io
import json
import logging
import socket
import subprocess
import sys

import httpx
import pytest
from temporalio import activity
from temporalio.testing import ActivityEnvironment

from activities.venues.simulated import FAULTS_KEY
from config.settings import ConfigError, load_settings
from oms.models import OrderSnapshot, OrderState
from tests.conftest import REPO, free_port_run, stop_process, tom_process
from tests.helpers import make_signal
from workers.observability import JsonFormatter, TemporalContextFilter, worker_metrics_bind


@pytest.mark.parametrize("bind", ["localhost:9000", "0.0.0.0", "0.0.0.0:0", "0.0.0.0:70000", "::1:9000"])
def test_a_metrics_bind_that_is_not_ip_and_port_is_refused_at_load(bind):
    with pytest.raises(ConfigError, match=r"temporal.metrics_bind: must be <ip>:<port>"):
        load_settings(REPO / "config" / "local.yaml", env={"TOM_METRICS_BIND": bind})
    assert load_settings(REPO / "config" / "local.yaml", env={"TOM_METRICS_BIND": "[::]:9000"}).temporal.metrics_bind


def test_each_worker_slot_serves_on_its_own_port():
    assert worker_metrics_bind(None, 3) is None
    assert worker_metrics_bind("0.0.0.0:9000", 1) == "0.0.0.0:9000"  # one process per pod: the declared port
    assert worker_metrics_bind("[::]:9000", 4) == "[::]:9003"
    with pytest.raises(ConfigError, match="worker 2 would serve on port 65536"):
        worker_metrics_bind("127.0.0.1:65535", 2)


def test_a_worker_whose_metrics_port_is_taken_refuses_to_start_in_one_line(stack_settings, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        config = tmp_path / "taken.yaml"
        config.write_text(stack_settings.with_overrides(
            temporal={**stack_settings.temporal.model_dump(mode="json"), "metrics_bind": bind}).to_yaml())
        log = tmp_path / "worker.log"
        worker = tom_process(config, "worker", "--processes", "1", log_path=log)
        assert worker.wait(60) == 2, log.read_text()
    assert f"tom: config error: temporal.metrics_bind: cannot serve metrics on {bind}" in log.read_text()


def test_a_workflow_logger_line_names_the_order_by_the_details_temporalio_puts_on_it():
    # workflow.logger (temporalio's sandbox adapter) puts the run's details under `temporal_workflow`.
    record = logging.LogRecord("temporalio.workflow", logging.INFO, __file__, 1, "retrying", None, None)
    record.temporal_workflow = {"workflow_id": "order-s1", "run_id": "r-1", "workflow_type": "OrderWorkflow"}
    assert TemporalContextFilter().filter(record)
    line = json.loads(JsonFormatter([]).format(record))
    assert (line["order_id"], line["workflow_id"], line["run_id"]) == ("order-s1", "order-s1", "r-1")
    assert line["message"] == "retrying"


CRASHING = """
import warnings
from config.settings import load_settings
from workers.runtime import configure_logging
settings = load_settings("config/local.yaml", env={"REDIS_PASSWORD": "sup3r-s3cret"})
configure_logging(settings.with_overrides(orders={**settings.orders.model_dump(mode="json"), "log_format": "json"}))
warnings.warn("an old API")
raise RuntimeError("redis at sup3r-s3cret refused")
"""


def test_with_json_logs_a_warning_and_a_crash_are_json_lines_too():
    crashed = subprocess.run([sys.executable, "-c", CRASHING], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 1 and crashed.stdout == ""
    warning, crash = [json.loads(line) for line in crashed.stderr.splitlines()]
    assert warning["logger"] == "py.warnings" and "UserWarning: an old API" in warning["message"]
    assert crash["level"] == "CRITICAL" and crash["message"] == "uncaught exception"
    assert crash["exception"].endswith("RuntimeError: redis at *** refused")


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_our_own_logger_inside_an_activity_names_the_order_and_secrets_stay_out():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(["sup3r-s3cret"]))
    handler.addFilter(TemporalContextFilter())
    logger = logging.getLogger("tom.test_observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    @activity.defn
    async def submit() -> None:
        logger.info("submitting with key %s", "sup3r-s3cret")
        try:
            raise RuntimeError("venue said sup3r-s3cret is wrong")
        except RuntimeError:
            logger.exception("submit failed")

    env = ActivityEnvironment()
    try:
        await env.run(submit)
        logger.warning("outside any order")
    finally:
        logger.removeHandler(handler)
    inside_1, inside_2, outside = json_lines(stream)
    info = env.info
    for line in (inside_1, inside_2):
        assert (line["order_id"], line["workflow_id"], line["run_id"]) == (info.workflow_id, info.workflow_id,
                                                                           info.workflow_run_id)
        assert line["logger"] == "tom.test_observability" and line["time"].endswith("Z")
    assert inside_1["message"] == "submitting with key ***" and inside_1["level"] == inside_1["severity"] == "INFO"
    assert "venue said *** is wrong" in inside_2["exception"] and inside_2["level"] == "ERROR"
    assert "sup3r-s3cret" not in stream.getvalue()
    assert outside["message"] == "outside any order" and not {"order_id", "workflow_id", "run_id"} & outside.keys()


async def test_a_worker_serves_sdk_metrics_and_logs_json_lines_naming_the_order(
        temporal_env, stack_settings, redis, tmp_path, monkeypatch):
    base = free_port_run(2)
    settings = stack_settings.with_overrides(
        temporal={**stack_settings.temporal.model_dump(mode="json"), "metrics_bind": f"127.0.0.1:{base}"},
        orders={**stack_settings.orders.model_dump(mode="json"), "log_format": "json"})
    config = tmp_path / "observed.yaml"
    config.write_text(settings.to_yaml())
    # As the supervisor starts its second child: that child serves on the configured port + 1.
    monkeypatch.setenv("TOM_WORKER_SLOT", "2")
    port = base + 1
    log = tmp_path / "worker.log"
    worker = tom_process(config, "worker", "--processes", "1", log_path=log)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while not (log.exists() and "worker on task queue" in log.read_text()):
            assert worker.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        # Two lines about the order from inside it: the workflow refuses a malformed cancel (sent
        # with the start) in workflow.logger; the activity reports the lost acknowledgement.
        await redis.hset(FAULTS_KEY, "lost_ack_next", 1)
        signal_ = make_signal()
        handle = await temporal_env.client.start_workflow(
            "OrderWorkflow", signal_, id=signal_.workflow_id, task_queue=settings.temporal.task_queue,
            result_type=OrderSnapshot, start_signal="cancel", start_signal_args=[{"bogus": 1}])
        final = await asyncio.wait_for(handle.result(), 60)
        assert final.state == OrderState.FILLED, final
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    finally:
        stop_process(worker)
    queue = f'task_queue="{settings.temporal.task_queue}"'
    completed = [line for line in metrics.splitlines() if line.startswith("temporal_workflow_completed{")]
    assert any(queue in line and 'workflow_type="OrderWorkflow"' in line for line in completed), metrics
    assert any(line.startswith("temporal_request{") for line in metrics.splitlines()), metrics

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    about_order = [line for line in lines if line.get("workflow_id") == handle.id]
    for line in about_order:
        assert line["order_id"] == handle.id and line["run_id"] == handle.result_run_id, line
    loggers = {line["logger"]: line["message"] for line in about_order}
    assert loggers.get("temporalio.workflow", "").startswith("cancel signal refused, order unchanged"), lines
    # The lost acknowledgement: prepare_and_place hands the venue's error to the workflow as data and says so.
    assert loggers.get("temporalio.activity", "").startswith("venue submit failed, outcome handed to the workflow:"), lines
