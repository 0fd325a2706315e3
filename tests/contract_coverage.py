"""Contract coverage: which parts of the public contract the test run actually exercised.

Collected from what the tests really ran, never from a hand list:
- order states, denial reasons and venue answers from the history of every workflow on the test
  Temporal servers (read when the session's servers shut down): `OrderState` search-attribute
  upserts, the snapshots a workflow returned or continued as new with, each venue local activity's
  answer (a report's `status`, or a failure's `VenueErrorType`) and every `venue_update` report the
  poller signalled;
- denial reasons also from every in-process call of `oms.validation.validate_order` and
  `validate_amend` (an amend refusal is an update's error, not an order's end);
- CLI commands from every `python -m workers.cli` / `tom` subprocess the tests started (any
  helper: the hook is on `subprocess.Popen`), with the exit codes they ended with.

What is required is read from the code: `DenialReason`, `OrderState`, `VenueOrderStatus`,
`VenueErrorType` and `workers.cli.COMMANDS`, so a new member is required at once. The report is
written to `.test-reports/contract-coverage.json` and summarised in the terminal; when the whole
suite ran (no -k/-m, no file or node selection, nothing deselected, every test run), a missing item
fails the run. `--contract-coverage-strict` applies that rule to any selection (to test the check).
"""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import temporalio.client

REPO = Path(__file__).resolve().parent.parent
REPORT_PATH = REPO / ".test-reports" / "contract-coverage.json"
CATEGORIES = ("denial_reasons", "order_states", "venue_statuses", "venue_error_types", "cli_commands")


def required() -> dict[str, list[str]]:
    from oms.models import OrderState
    from oms.validation import DenialReason
    from oms.venue import VenueErrorType, VenueOrderStatus
    from workers.cli import COMMANDS

    return {
        "denial_reasons": [r.value for r in DenialReason],
        "order_states": [s.value for s in OrderState],
        "venue_statuses": [s.value for s in VenueOrderStatus],
        "venue_error_types": [t.value for t in VenueErrorType],
        "cli_commands": list(COMMANDS),
    }


class Observations:
    """Thread-safe counters of what was seen (workers record from their own threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, Counter] = {name: Counter() for name in CATEGORIES}
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.workflows_read = 0
        self.history_errors: list[str] = []

    def add(self, category: str, value: str, count: int = 1) -> None:
        with self._lock:
            self.seen[category][value] += count


OBSERVED = Observations()


# --- denial reasons from in-process validation -----------------------------------------------------
def _wrap_validators() -> None:
    """Record every Denial that `validate_order` or `validate_amend` returns (unit tests and
    in-process workflows). Installed before any test module (or the workflow module) binds the names."""
    import functools

    import oms.validation as validation

    for name in ("validate_order", "validate_amend"):
        original = getattr(validation, name)
        if getattr(original, "__wrapped_for_coverage__", False):
            continue

        def recording(*args, _original=original, **kwargs):
            denial = _original(*args, **kwargs)
            if denial is not None:
                OBSERVED.add("denial_reasons", denial.reason.value)
            return denial

        recording = functools.wraps(original)(recording)
        recording.__wrapped_for_coverage__ = True
        setattr(validation, name, recording)


class StartedWorkflows(temporalio.client.Interceptor):
    """A client interceptor remembering every workflow started through it: the time-skipping
    server cannot list its workflows, so their histories are fetched by id instead."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def intercept_client(self, next):
        ids = self.ids

        class Recording(temporalio.client.OutboundInterceptor):
            async def start_workflow(self, input):
                handle = await super().start_workflow(input)
                ids.append(handle.id)
                return handle

        return Recording(next)


# --- CLI commands from subprocesses ------------------------------------------------------------------
def cli_command(argv: Any) -> str | None:
    """The `tom` subcommand a Popen argv runs, or None if it is not the CLI."""
    from workers.cli import COMMANDS

    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)):
        return None
    argv = [str(a) for a in argv]
    if "workers.cli" in argv:
        rest = argv[argv.index("workers.cli") + 1:]
    elif argv and Path(argv[0]).name == "tom":
        rest = argv[1:]
    else:
        return None
    skip = False
    for token in rest:
        if skip:
            skip = False
            continue
        if token == "--config":
            skip = True
            continue
        if token.startswith("-"):
            continue
        return token if token in COMMANDS else None
    return None


def _hook_popen() -> None:
    original = subprocess.Popen.__init__
    if getattr(original, "__wrapped_for_coverage__", False):
        return

    def __init__(self, args, *rest, **kwargs):
        original(self, args, *rest, **kwargs)
        command = cli_command(args)
        if command is not None:
            with OBSERVED._lock:
                OBSERVED.processes.append((command, self))

    __init__.__wrapped_for_coverage__ = True
    subprocess.Popen.__init__ = __init__


# --- order states, denials and venue answers from workflow histories -------------------------------
def _payload_json(payload: dict) -> Any:
    encoding = base64.b64decode(payload.get("metadata", {}).get("encoding", "")).decode(errors="replace")
    if encoding != "json/plain" or "data" not in payload:
        return None  # binary/null, or encrypted (temporal.payload_key): nothing we can read
    return json.loads(base64.b64decode(payload["data"]))


def _payloads(container: dict | None) -> list[Any]:
    return [_payload_json(p) for p in (container or {}).get("payloads", [])]


def _snapshot_items(snapshot: Any) -> None:
    if not isinstance(snapshot, dict):
        return
    for transition in snapshot.get("transitions") or []:
        state = transition.get("state")
        if state:
            OBSERVED.add("order_states", state)
        if state == "denied" and transition.get("reason"):
            OBSERVED.add("denial_reasons", transition["reason"].split(":", 1)[0])


def _venue_report(report: Any) -> None:
    if isinstance(report, dict) and report.get("status") and "client_order_id" in report:
        OBSERVED.add("venue_statuses", report["status"])


def read_history_events(events: list[dict]) -> None:
    """Record what one workflow's history (protobuf JSON form) shows."""
    for event in events:
        if attrs := event.get("upsertWorkflowSearchAttributesEventAttributes"):
            fields = attrs.get("searchAttributes", {}).get("indexedFields", {})
            if "OrderState" in fields:
                value = _payload_json(fields["OrderState"])
                if isinstance(value, str):
                    OBSERVED.add("order_states", value)
        elif attrs := event.get("markerRecordedEventAttributes"):
            if attrs.get("markerName") != "core_local_activity":
                continue
            details = attrs.get("details", {})
            data = (_payloads(details.get("data")) or [None])[0]
            activity = data.get("activity_type", "") if isinstance(data, dict) else ""
            if activity == "prepare_and_place" and not attrs.get("failure"):  # the submission's outcome is data
                for result in _payloads(details.get("result")):
                    outcome = (result or {}).get("outcome") or {}
                    if outcome.get("failure"):
                        OBSERVED.add("venue_error_types", outcome["failure"]["type"])
                    elif outcome.get("report"):
                        _venue_report(outcome["report"])
                continue
            if not (activity.startswith("venue_") or activity in ("prepare_order", "prepare_and_place")):
                continue
            failure = attrs.get("failure")
            if failure:
                while failure and not failure.get("applicationFailureInfo") and failure.get("cause"):
                    failure = failure["cause"]
                kind = (failure or {}).get("applicationFailureInfo", {}).get("type")
                if kind:
                    OBSERVED.add("venue_error_types", kind)
            else:
                for result in _payloads(details.get("result")):
                    _venue_report(result)
        elif attrs := event.get("workflowExecutionSignaledEventAttributes"):
            if attrs.get("signalName") == "venue_update":
                for report in _payloads(attrs.get("input")):
                    _venue_report(report)
        elif attrs := event.get("workflowExecutionCompletedEventAttributes"):
            for result in _payloads(attrs.get("result")):
                _snapshot_items(result)
        elif attrs := event.get("workflowExecutionContinuedAsNewEventAttributes"):
            for state in _payloads(attrs.get("input")):
                if isinstance(state, dict):
                    _snapshot_items(state.get("snapshot"))


async def collect_histories(client, workflow_types: tuple[str, ...] = ("OrderWorkflow", "ParentOrderWorkflow"),
                            concurrency: int = 16, started_ids: list[str] | None = None) -> None:
    """Read every history of `workflow_types` (orders and parent orders) on the server `client` talks
    to (on a server that cannot list them, those of `started_ids`, the workflows a StartedWorkflows
    interceptor saw started)."""
    from google.protobuf.json_format import MessageToDict

    types = ", ".join(f"'{t}'" for t in workflow_types)
    try:
        executions = [e async for e in client.list_workflows(f"WorkflowType IN ({types})")]
    except Exception as exc:  # a server without visibility queries: the workflows started through it
        if started_ids is None:
            OBSERVED.history_errors.append(f"list_workflows: {type(exc).__name__}: {exc}")
            return
        executions = [_Started(workflow_id) for workflow_id in dict.fromkeys(started_ids)]
    gate = asyncio.Semaphore(concurrency)

    async def read(execution) -> None:
        async with gate:
            try:
                history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            except Exception as exc:
                OBSERVED.history_errors.append(f"{execution.id}: {type(exc).__name__}")
                return
        read_history_events([MessageToDict(e) for e in history.events])
        OBSERVED.workflows_read += 1

    await asyncio.gather(*(read(e) for e in executions))


class _Started:
    """An execution known by its id alone (its latest run is read)."""

    def __init__(self, workflow_id: str) -> None:
        self.id, self.run_id = workflow_id, None


# --- the report -------------------------------------------------------------------------------------
def build_report() -> dict[str, Any]:
    for command, proc in OBSERVED.processes:
        OBSERVED.add("cli_commands", command)
    exit_codes: dict[str, list] = defaultdict(list)
    for command, proc in OBSERVED.processes:
        exit_codes[command].append(proc.returncode)
    report: dict[str, Any] = {"workflows_read": OBSERVED.workflows_read,
                              "history_errors": OBSERVED.history_errors[:20], "categories": {}}
    for category, members in required().items():
        seen = OBSERVED.seen[category]
        report["categories"][category] = {
            "required": members,
            "seen": {m: seen[m] for m in members if seen[m]},
            "missing": [m for m in members if not seen[m]],
            "unexpected": sorted(set(seen) - set(members)),  # seen but not in the enum: worth a look
        }
    report["categories"]["cli_commands"]["exit_codes"] = dict(exit_codes)
    return report


class ContractCoveragePlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.deselected = 0
        self.finished = 0
        self.report: dict[str, Any] | None = None
        self.enforced = False

    def _whole_suite(self, session: pytest.Session) -> bool:
        if self.config.getoption("contract_coverage_strict"):
            return True
        option = self.config.option
        if option.keyword or option.markexpr or self.deselected:
            return False
        tests_dir = (REPO / "tests").resolve()
        for arg in self.config.args:
            if "::" in arg or Path(arg).resolve() not in (tests_dir, REPO.resolve()):
                return False
        return self.finished >= len(session.items) > 0 and not session.shouldstop

    def pytest_deselected(self, items) -> None:
        self.deselected += len(items)

    def pytest_runtest_logfinish(self) -> None:
        self.finished += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.report = build_report()
        self.enforced = self._whole_suite(session)
        self.report["whole_suite"] = self.enforced
        REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
        REPORT_PATH.write_text(json.dumps(self.report, indent=2, sort_keys=True) + "\n")
        missing = {c: v["missing"] for c, v in self.report["categories"].items() if v["missing"]}
        if self.enforced and missing and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.report is None:
            return
        tr = terminalreporter
        tr.section("contract coverage")
        for category, entry in self.report["categories"].items():
            total, missing = len(entry["required"]), entry["missing"]
            line = f"{category:<18} {total - len(missing)}/{total}"
            if missing:
                line += "  missing: " + ", ".join(missing)
            tr.write_line(line)
        tr.write_line(f"({self.report['workflows_read']} workflow histories read; report in "
                      f"{REPORT_PATH.relative_to(REPO)})")
        missing_any = any(e["missing"] for e in self.report["categories"].values())
        if self.enforced and missing_any:
            tr.write_line("FAILED: the contract items listed as missing above were never exercised "
                          "(whole suite, or --contract-coverage-strict)", red=True, bold=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--contract-coverage-strict", action="store_true", default=False,
                     help="fail the run on any contract item not exercised, whatever the selection")


def install(config: pytest.Config) -> None:
    _wrap_validators()
    _hook_popen()
    config.pluginmanager.register(ContractCoveragePlugin(config), "contract-coverage")
