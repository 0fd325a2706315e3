"""What a process tells its operators: JSON log lines that name the order, and the Temporal SDK's metrics.

- `orders.log_format: json` writes every log line as one JSON object (time, level/severity, logger,
  message, and order_id / workflow_id / run_id whenever the line is emitted inside a workflow or an
  activity), which GKE's log agent parses into structured entries. Secrets are redacted in every
  field, as in text lines (workers/runtime.py RedactingFormatter).
- `temporal.metrics_bind` makes `tom worker` serve the SDK's Prometheus metrics (task latencies,
  workflow completions, poller and slot counts) on `http://<bind>/metrics`. A Temporal runtime is
  per process, and so is its metrics server: the children of `tom worker --processes N` serve on
  the configured port plus their slot - 1 (slot 1..N, TOM_WORKER_SLOT from workers/supervisor.py),
  so slot 1, and a pod's single worker, serves on the configured port itself.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from temporalio import activity, workflow
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from config.settings import ConfigError, Settings
from workers.runtime import RedactingFormatter

CONTEXT_KEYS = ("order_id", "workflow_id", "run_id")


def _ids_from_extra(record: logging.LogRecord) -> tuple[str, str] | None:
    """The ids temporalio's workflow.logger / activity.logger put on their records."""
    details = getattr(record, "temporal_workflow", None)
    if isinstance(details, dict) and details.get("workflow_id"):
        return details["workflow_id"], details.get("run_id", "")
    details = getattr(record, "temporal_activity", None)
    if isinstance(details, dict) and details.get("workflow_id"):
        return details["workflow_id"], details.get("workflow_run_id", "")
    return None


def _ids_in_context() -> tuple[str, str] | None:
    """The ids of the activity or workflow this line is emitted in (our own loggers carry no extra)."""
    if activity.in_activity():
        info = activity.info()
        if info.workflow_id:
            return info.workflow_id, info.workflow_run_id or ""
    elif workflow.in_workflow():
        info = workflow.info()
        return info.workflow_id, info.run_id
    return None


class TemporalContextFilter(logging.Filter):
    """Puts order_id, workflow_id and run_id on a record emitted inside a workflow or activity.

    Every workflow of this service is an order whose id is its workflow id (OrderWorkflow,
    ParentOrderWorkflow and its child orders), so order_id is the workflow id; a line that names
    its ids itself (`extra={"order_id": ...}`) keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "workflow_id", None) is None:
            ids = _ids_from_extra(record) or _ids_in_context()
            if ids:
                record.workflow_id, record.run_id = ids
        if getattr(record, "order_id", None) is None and getattr(record, "workflow_id", None):
            record.order_id = record.workflow_id
        return True


class JsonFormatter(RedactingFormatter):
    """One JSON object a line. `severity` repeats `level` because that is the key Cloud Logging maps
    to an entry's severity; `level` is what people grep for."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(secrets, "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, str] = {
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value:
                entry[key] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps({key: self.redact(value) for key, value in entry.items()}, ensure_ascii=False)


def use_json_logs(secrets: list[str]) -> None:
    """Root handlers write JSON; temporalio's loggers stop appending their details dict to the
    message (the ids are fields now)."""
    formatter = JsonFormatter(secrets)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    # What Python itself would print to stderr goes through logging too: warnings, and the
    # traceback of an exception nothing caught (a crash is one JSON line, not forty text lines).
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind, error, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("tom").critical("uncaught exception", exc_info=(kind, error, traceback))


def add_context_filter() -> None:
    context = TemporalContextFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(context)


def worker_metrics_bind(bind: str | None, slot: int) -> str | None:
    """The metrics address of worker `slot` (1-based): the configured port plus slot - 1."""
    if bind is None:
        return None
    host, port = bind.rsplit(":", 1)
    mine = int(port) + slot - 1
    if mine > 65535:
        raise ConfigError(f"temporal.metrics_bind {bind}: worker {slot} would serve on port {mine} (> 65535)")
    return f"{host}:{mine}"


def install_temporal_runtime(settings: Settings, metrics_bind: str | None) -> None:
    """This process's Temporal runtime, before any client exists: the Prometheus endpoint when
    `metrics_bind` is given, and with JSON logs the SDK core's own (Rust) log lines forwarded into
    Python logging, so they are JSON too instead of plain text on stderr. Otherwise the SDK's
    default runtime is left alone."""
    json_logs = settings.orders.log_format == "json"
    if not json_logs and metrics_bind is None:
        return
    core_logs = LoggingConfig.default
    if json_logs:
        core_logs = LoggingConfig(filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                                  forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")))
    metrics = PrometheusConfig(bind_address=metrics_bind) if metrics_bind else None
    try:
        runtime = Runtime(telemetry=TelemetryConfig(logging=core_logs, metrics=metrics))
    except Exception as error:  # the SDK's bind error (address in use, not an address of this host)
        raise ConfigError(f"temporal.metrics_bind: cannot serve metrics on {metrics_bind}: {error}") from None
    Runtime.set_default(runtime)
