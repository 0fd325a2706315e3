"""The last lines of a run name what each failing test died of: every exception in its chain, where
it was raised, one line each. A CI log is often read from its tail only, and a long traceback (an
SDK error wrapping the real one, "Failed validating workflow ...") pushes the cause out of view."""
from __future__ import annotations

import pytest

MESSAGE_CHARS = 300


def chain_lines(report: pytest.TestReport) -> list[str]:
    """'path:line: message' for each exception of the report's chain, outermost last (as raised)."""
    chain = getattr(report.longrepr, "chain", None)
    if not chain:
        crash = getattr(report.longrepr, "reprcrash", None)
        chain = [(None, crash, None)] if crash else []
    lines = []
    for _, crash, _ in chain:
        if crash is None:
            continue
        message = " ".join(crash.message.split())
        if len(message) > MESSAGE_CHARS:
            message = message[:MESSAGE_CHARS] + " …"
        lines.append(f"{crash.path}:{crash.lineno}: {message}")
    return lines


class FailureCausesPlugin:
    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter) -> None:
        reports = [r for kind in ("failed", "error") for r in terminalreporter.stats.get(kind, [])
                   if isinstance(r, pytest.TestReport)]
        if not reports:
            return
        terminalreporter.section("what each failure died of (its exception chain)")
        for report in reports:
            terminalreporter.write_line(f"{report.nodeid} ({report.when}):")
            for line in chain_lines(report) or ["(no traceback)"]:
                terminalreporter.write_line(f"    {line}")


def install(config: pytest.Config) -> None:
    config.pluginmanager.register(FailureCausesPlugin(), "failure-causes")
