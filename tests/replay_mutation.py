"""Mutation check of the recorded histories: do they notice a changed workflow?

For every branch of every module in workflows/ (the workflows and the helper modules and mixins
they import; a function's body, each body of if/elif/else, for/while and their else,
try/except/else/finally, with, match case), one mutant inserts an extra workflow command at the
start of that branch: `await workflow.sleep(0.001)` in async code, a timer task in sync code. The
branch is caught if some recorded history (tests/histories/**) fails to replay against the mutant
with a command mismatch, as an unguarded change would fail the replay of running orders. Queries
and update validators are left out: they cannot issue commands.

One process, no server: the mutated source is compiled into a fresh module (with fresh copies of
the modules that import it) and replayed with the UnsandboxedWorkflowRunner. A probe build first
records which histories reach which branch (a plain function call at each branch, no command), so
each mutant replays only the histories that reach it, and a branch no history reaches is reported
as such without replaying anything.

    python -m tests.replay_mutation                       # print the figure and the uncaught branches
    python -m tests.replay_mutation --write tests/replay_mutation_report.md
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import copy
import importlib
import itertools
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = REPO / "workflows"
HISTORIES = REPO / "tests" / "histories"
REPORT = REPO / "tests" / "replay_mutation_report.md"
REQUIRED_SHARE = 0.90

# Known reasons a branch cannot be caught, keyed by "<function>: <first line of the branch>" (the
# source text, so the note follows the code when lines move). Everything else is reported as found.
KNOWN = {
    "OrderWorkflow._wait: return condition()":
        "dead code: both callers pass a positive timeout (each compares with workflow.now(), which is "
        "constant within a workflow task, just before)",
    'OrderWorkflow._amend_refusal: return f"order is already {snap.state.value}"':
        "reachable only in a race: an amend signal delivered after the order ended but before its "
        "workflow closed (update validators, which also call this, are not replayed)",
    "OrderWorkflow._amend_at_venue: self._state.amend_results[pending.id] = refusal":
        "reachable only in a race: an amend valid on arrival whose quantity a fill overtakes before "
        "the main loop takes it up",
    'Release01Paths._apply_report_v1: apply(snap, S.REJECTED, workflow.now(), report.reason or "rejected by the venue")':
        "needs a venue report `rejected` applied by a release-0.1 order; release 0.1 cannot apply it to an "
        "accepted order (accepted -> rejected is not in its transition table: the workflow task fails on "
        "every attempt), and no venue answers a submission with a rejected report (a rejection is an error)",
    "OrderWorkflow._hand_over: return  # arrived meanwhile: served first":
        "reachable only in a race: a cancel or amend arriving during the 1 ms closing-barrier timer "
        "just before the run continues as new",
    "OrderWorkflow._revalidate_at_current_prices: await self._deny(denial)":
        "needs the venue's price to move, during a start_at wait, past a validation band the order met "
        "at signal time; the recorder's deterministic price paths do not within a scenario's wait",
    "OrderWorkflow._reconcile: raise":
        "needs a Temporal cancellation delivered while a reconciliation fetch is held at the venue past "
        "the workflow task's heartbeat (~8 s); not recorded (the same re-raise in `_venue` and "
        "`_cancel_at_venue` is, by binance-workflow-cancelled-while-cancel-held)",
    "OrderWorkflow._cancel_and_replace: raise":
        "needs a Temporal cancellation delivered while a cancel-and-replace venue call is held past the "
        "workflow task's heartbeat (~8 s); not recorded",
    "OrderWorkflow._reconcile: await self._apply_report(report)":
        "needs an order found only on the look after the receive window (a held create landing during "
        "the wait); the attempt to record it (binance, create held 2 s, window 3 s) took another path "
        "(the first look came before the cancel, so the order was sent again, and both looks after "
        "the window found nothing), so it is not in the recorded set",
    "OrderWorkflow._ending: return S.EXPIRED":
        "needs a GTD order still unknown when its expire_at passes with no cancel under way; the "
        "attempt to record it (create held, reads refused past expire_at) did not end within the "
        "recorder's 60 s, so it is not in the recorded set",
    "OrderWorkflow._cancel_at_venue: report = await self._fetch_quietly() or report  # the final fills (else reconciled)":
        "needs a cancel answered as final without all its fills; the ccxt adapter fetches an order's "
        "trades within the call (fills_complete) and the simulated venue lists every fill: only the "
        "poller's listings are incomplete, and they never answer a cancel",
    'OrderWorkflow._amend_at_venue: refusal = f"cannot read the venue\'s price to validate the amend: {_error_message(error)}"':
        "needs read_prices to fail during an amend; a 5xx on the emulator's market endpoints did not "
        "make it fail (attempted), so it is not in the recorded set",
    'OrderWorkflow._cancel_and_replace: await self._transition(S.UNKNOWN, f"cancel-and-replace: the old order\'s end is not confirmed "':
        "needs a cancel-and-replace whose cancel answer and then six fetches all show the old order "
        "open or without all its fills; the adapters answer a cancel final and complete",
    'OrderWorkflow._apply_report: apply(snap, S.UNKNOWN, now, f"venue says {status.value} with fills not yet listed; fetching them")':
        "needs a final report without all its fills from a venue call; only the poller's listings are "
        "incomplete, and `_track_once` fetches those in full before applying them (or drops them)",
    "OrderWorkflow._apply_report: apply(snap, S.FILLED, now, None)":
        "apply_fill moves an order to filled as its fills reach its quantity (every live state may go "
        "to filled), so the order is already terminal (the first branch) when its status is read",
}

HIT = "__mutation_hit__"
COMMAND = "__mutation_command__"
SLEEP = "__mutation_sleep__"


@dataclass(frozen=True)
class Branch:
    module: str  # dotted, e.g. workflows.order
    path: str  # relative to the repository
    index: int  # position in the module's walk
    function: str
    kind: str
    line: int  # first statement of the branch
    is_async: bool
    text: str  # that statement's first line

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


# --- finding the branches ----------------------------------------------------------------------
def _decorator_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = []
    for dec in fn.decorator_list:
        node = dec.func if isinstance(dec, ast.Call) else dec
        names.append(ast.unparse(node))
    return names


def _cannot_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Queries and update validators run read-only: the SDK forbids commands there."""
    return any(name in ("workflow.query", "query") or name.endswith(".validator") for name in _decorator_names(fn))


def _blocks(tree: ast.Module) -> Iterator[tuple[str, str, bool, list[ast.stmt]]]:
    """(function, kind, is_async, statements) for each branch, in a fixed order (the same order for a
    copy of the same tree, which is how a mutant finds its branch)."""

    def in_function(fn, qualname: str) -> Iterator[tuple[str, str, bool, list[ast.stmt]]]:
        is_async = isinstance(fn, ast.AsyncFunctionDef)
        yield qualname, "body of the function", is_async, fn.body
        yield from statements(fn.body, qualname, is_async)

    def statements(body: list[ast.stmt], qualname: str, is_async: bool):
        for node in body:
            yield from statement(node, qualname, is_async)

    def statement(node: ast.stmt, qualname: str, is_async: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not _cannot_command(node):
                yield from in_function(node, f"{qualname}.{node.name}")
            return
        if isinstance(node, ast.ClassDef):
            return  # a class nested in a function: not workflow code paths we can reach here
        blocks: list[tuple[str, list[ast.stmt]]] = []
        if isinstance(node, ast.If):
            blocks.append(("if", node.body))
            is_elif = len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If) \
                and node.orelse[0].col_offset == node.col_offset
            if node.orelse and not is_elif:
                blocks.append(("else", node.orelse))
            elif is_elif:
                blocks.append(("elif-chain", node.orelse))  # walked below, not a branch of its own
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            blocks.append((type(node).__name__.lower().replace("async", "async ") + " body", node.body))
            if node.orelse:
                blocks.append(("loop else", node.orelse))
        elif isinstance(node, (ast.Try, ast.TryStar)):
            blocks.append(("try", node.body))
            for handler in node.handlers:
                caught = ast.unparse(handler.type) if handler.type is not None else "everything"
                blocks.append((f"except {caught}", handler.body))
            if node.orelse:
                blocks.append(("try else", node.orelse))
            if node.finalbody:
                blocks.append(("finally", node.finalbody))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            blocks.append(("with", node.body))
        elif isinstance(node, ast.Match):
            for case in node.cases:
                blocks.append((f"case {ast.unparse(case.pattern)}", case.body))
        for kind, stmts in blocks:
            if kind != "elif-chain":
                yield qualname, kind, is_async, stmts
            yield from statements(stmts, qualname, is_async)

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not _cannot_command(node):
                yield from in_function(node, node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _cannot_command(item):
                    yield from in_function(item, f"{node.name}.{item.name}")


def _insert_at(stmts: list[ast.stmt]) -> int:
    """After a docstring: the mutation goes before the branch's first real statement."""
    first = stmts[0]
    is_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
              and isinstance(first.value.value, str))
    return 1 if is_doc and len(stmts) > 1 else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@dataclass
class WorkflowModule:
    module: str
    path: Path
    source: str
    tree: ast.Module = field(init=False)

    def __post_init__(self) -> None:
        self.tree = ast.parse(self.source, str(self.path))

    def imports(self, names: set[str]) -> set[str]:
        """Which of the modules `names` this one imports."""
        found = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        return (found & names) - {self.module}

    def branches(self) -> list[Branch]:
        lines = self.source.splitlines()
        out = []
        for index, (function, kind, is_async, stmts) in enumerate(_blocks(self.tree)):
            first = stmts[_insert_at(stmts)]
            out.append(Branch(self.module, _shown(self.path), index, function, kind, first.lineno,
                              is_async, lines[first.lineno - 1].strip()))
        return out

    def build(self, insert: dict[int, ast.stmt]) -> types.ModuleType:
        """This module compiled afresh with `insert[i]` placed at the start of branch i."""
        tree = copy.deepcopy(self.tree)
        for index, (_, _, _, stmts) in enumerate(_blocks(tree)):
            if index in insert:
                at = _insert_at(stmts)
                stmts.insert(at, ast.copy_location(copy.deepcopy(insert[index]), stmts[at]))
        ast.fix_missing_locations(tree)
        name = f"_mutant_{next(_serial)}_{self.module.replace('.', '_')}"
        module = types.ModuleType(name)
        module.__file__ = str(self.path)
        module.__dict__.update({HIT: _hit, COMMAND: _command, SLEEP: _sleep})
        sys.modules[name] = module  # pydantic resolves the models' annotations through sys.modules
        try:
            exec(compile(tree, str(self.path), "exec"), module.__dict__)
        finally:
            sys.modules.pop(name, None)
        return module


_serial = itertools.count()
_hits: set[tuple[str, int]] = set()


def _hit(module: str, index: int) -> None:
    _hits.add((module, index))


def _sleep():
    return workflow.sleep(0.001)


def _command() -> None:
    """A command from sync code: a timer task, started on the workflow's event loop."""
    asyncio.get_running_loop().create_task(workflow.sleep(0.001))


def _call(name: str, *args) -> ast.stmt:
    call = ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[ast.Constant(a) for a in args], keywords=[])
    return ast.Expr(value=call)


def mutation_for(branch: Branch) -> ast.stmt:
    if branch.is_async:
        return ast.Expr(value=ast.Await(value=ast.Call(func=ast.Name(id=SLEEP, ctx=ast.Load()), args=[], keywords=[])))
    return _call(COMMAND)


def workflow_modules(root: Path = WORKFLOWS_DIR) -> list[WorkflowModule]:
    """Every module in workflows/ that has functions: the workflows and the helpers, mixins and
    shared functions they import (found, not listed by hand)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        candidate = WorkflowModule(module, path, source)
        if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(candidate.tree)):
            found.append(candidate)
    return found


def build_set(modules: list[WorkflowModule], inserts: dict[str, dict[int, ast.stmt]],
              changed: set[str]) -> dict[str, types.ModuleType]:
    """Fresh builds of the `changed` modules and of every module that imports one of them (directly
    or through another), in import order; while they are built each is visible under its real name,
    so a workflow module picks up its mutated helper module."""
    by_name = {m.module: m for m in modules}
    names = set(by_name)
    deps = {m.module: m.imports(names) for m in modules}
    rebuild = set(changed)
    while True:
        more = {name for name, uses in deps.items() if uses & rebuild} - rebuild
        if not more:
            break
        rebuild |= more
    built: dict[str, types.ModuleType] = {}
    with contextlib.ExitStack() as visible:
        while len(built) < len(rebuild):
            ready = sorted(n for n in rebuild - set(built) if not (deps[n] & rebuild) - set(built))
            if not ready:
                raise RuntimeError(f"import cycle among {sorted(rebuild - set(built))}")
            for name in ready:
                built[name] = by_name[name].build(inserts.get(name, {}))
                visible.enter_context(_visible_as(name, built[name]))
    return built


_MISSING = object()


@contextlib.contextmanager
def _visible_as(name: str, module: types.ModuleType) -> Iterator[None]:
    """`import name` and `from package import leaf` give `module` until the block ends."""
    parent, _, leaf = name.rpartition(".")
    package = sys.modules.get(parent) if parent else None
    saved_module = sys.modules.get(name, _MISSING)
    saved_attribute = getattr(package, leaf, _MISSING) if package is not None else _MISSING
    sys.modules[name] = module
    if package is not None:
        setattr(package, leaf, module)
    try:
        yield
    finally:
        if saved_module is _MISSING:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved_module
        if package is not None:
            if saved_attribute is _MISSING:
                delattr(package, leaf)
            else:
                setattr(package, leaf, saved_attribute)


def installed_workflows() -> list[type]:
    """The workflow classes of every workflow module, as imported normally (for plain replay)."""
    return [cls for m in workflow_modules() for cls in workflow_classes(importlib.import_module(m.module))]


def workflow_classes(module: types.ModuleType) -> list[type]:
    return [value for value in vars(module).values()
            if isinstance(value, type) and value.__module__ == module.__name__
            and workflow._Definition.from_class(value) is not None]


# --- replaying ---------------------------------------------------------------------------------
def load_histories(root: Path = HISTORIES) -> list[tuple[str, WorkflowHistory]]:
    out = []
    for path in sorted(root.rglob("*.json")):
        out.append((str(path.relative_to(root)), WorkflowHistory.from_json(path.stem.split("@")[0], path.read_text())))
    return out


_quiet_runtime: Runtime | None = None


def _runtime() -> Runtime:
    """A runtime whose core does not log each expected nondeterminism warning."""
    global _quiet_runtime
    if _quiet_runtime is None:
        quiet = LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        _quiet_runtime = Runtime(telemetry=TelemetryConfig(logging=quiet))
    return _quiet_runtime


async def _replay_fails(workflows: list[type], history: WorkflowHistory) -> str | None:
    replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter,
                        workflow_runner=UnsandboxedWorkflowRunner(), runtime=_runtime())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return None if result.replay_failure is None else str(result.replay_failure)


def is_command_mismatch(error: str) -> bool:
    """The replay failed because the commands no longer match the history (what a real unguarded
    change causes), not because the mutant itself crashed."""
    return "Nondeterminism" in error or "Fatal error in workflow machines" in error


@dataclass
class Outcome:
    branch: Branch
    reached_by: list[str]
    caught_by: str | None = None
    error: str | None = None

    @property
    def caught(self) -> bool:
        return self.caught_by is not None

    @property
    def why(self) -> str:
        known = KNOWN.get(f"{self.branch.function}: {self.branch.text}")
        if not self.reached_by:
            found = "no recorded history reaches it"
        elif self.error:
            found = f"the mutant fails replay without a command mismatch: {self.error.splitlines()[0][:120]}"
        else:
            found = (f"reached by {len(self.reached_by)} histories, and each still replays with the extra "
                     f"command (e.g. {self.reached_by[0]})")
        return f"{found}; {known}" if known else found


@dataclass
class Result:
    outcomes: list[Outcome]
    histories: int
    seconds: float

    @property
    def caught(self) -> int:
        return sum(o.caught for o in self.outcomes)

    @property
    def share(self) -> float:
        return self.caught / len(self.outcomes) if self.outcomes else 0.0

    def summary(self, timed: bool = True) -> str:
        return (f"{self.caught} of {len(self.outcomes)} branches caught ({self.share:.1%}) by {self.histories} "
                f"recorded histories" + (f", in {self.seconds:.0f} s" if timed else ""))

    def uncaught(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.caught]


async def run_check(modules: list[WorkflowModule] | None = None,
                    histories: list[tuple[str, WorkflowHistory]] | None = None) -> Result:
    started = time.monotonic()
    modules = modules if modules is not None else workflow_modules()
    histories = histories if histories is not None else load_histories()
    everything = {m.module for m in modules}
    originals = {m.module: importlib.import_module(m.module) for m in modules}  # as the worker runs them

    # Probe: which histories reach which branch (the probe build issues no extra command).
    branches = {m.module: m.branches() for m in modules}
    probe = build_set(modules, {name: {b.index: _call(HIT, name, b.index) for b in found}
                                for name, found in branches.items()}, everything)
    probe_classes = [cls for module in probe.values() for cls in workflow_classes(module)]
    if not probe_classes:
        raise AssertionError("no workflow class found in workflows/")
    reached: dict[tuple[str, int], list[str]] = {}
    for name, history in histories:
        _hits.clear()
        failure = await _replay_fails(probe_classes, history)
        if failure:
            raise AssertionError(f"{name} does not replay on the unmutated code: {failure}")
        for key in _hits:
            reached.setdefault(key, []).append(name)
    by_name = dict(histories)
    size = {name: len(h.events) for name, h in histories}
    catches: dict[str, int] = {}

    outcomes = []
    for m in modules:
        for branch in branches[m.module]:
            names = reached.get((m.module, branch.index), [])
            outcome = Outcome(branch, sorted(names))
            if names:
                mutant = build_set(modules, {m.module: {branch.index: mutation_for(branch)}}, {m.module})
                workflows = [cls for name, module in {**originals, **mutant}.items()
                             for cls in workflow_classes(module)]
                # The histories that caught most so far first, then the shortest.
                for name in sorted(names, key=lambda n: (-catches.get(n, 0), size[n])):
                    error = await _replay_fails(workflows, by_name[name])
                    if error and is_command_mismatch(error):
                        outcome.caught_by, outcome.error = name, error
                        catches[name] = catches.get(name, 0) + 1
                        break
                    if error:  # the mutant broke some other way: not evidence that replay notices it
                        outcome.error = error
            outcomes.append(outcome)
    return Result(outcomes, len(histories), time.monotonic() - started)


def report(result: Result) -> str:
    lines = [
        "# Replay mutation check: branches the recorded histories do not guard",
        "",
        "Generated by `python -m tests.replay_mutation --write tests/replay_mutation_report.md`; do not edit.",
        "An extra workflow command at the start of a branch listed here replays cleanly against every",
        "recorded history (tests/histories/), so a change there would not be caught by tests/test_replay.py.",
        "",
        f"**{result.summary(timed=False)}.**",
        "",
        "| where | function | branch | first statement | why |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in result.uncaught():
        b = o.branch
        text = b.text.replace("|", "\\|")
        lines.append(f"| {b.where} | `{b.function}` | {b.kind} | `{text}` | {o.why} |")
    if not result.uncaught():
        lines.append("| - | - | - | - | every branch is caught |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Replay the recorded histories against one mutant per workflow branch.")
    parser.add_argument("--write", type=Path,
                        help=f"write the report of uncaught branches here (e.g. {REPORT.relative_to(REPO)})")
    parser.add_argument("--verbose", action="store_true", help="list every branch, caught or not")
    args = parser.parse_args(argv)
    result = asyncio.run(run_check())
    for o in result.outcomes if args.verbose else result.uncaught():
        status = f"caught by {o.caught_by}" if o.caught else f"UNCAUGHT: {o.why}"
        print(f"{o.branch.where:28} {o.branch.function:38} {o.branch.kind:28} {status}")
    print(result.summary())
    if args.write:
        args.write.write_text(report(result))
        print(f"wrote {args.write}")
    return 0 if result.share >= REQUIRED_SHARE else 1


if __name__ == "__main__":
    sys.exit(main())
