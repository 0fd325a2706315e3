"""Run timing-sensitive test files N times in a row while a CPU-heavy process competes for the cores.

    python -m tests.under_load                 # the default files, 5 runs
    python -m tests.under_load --runs 3 tests/test_worker_crash.py

A test that depends on the machine being idle (a fixed sleep, an upper bound on a round trip, a
price path reached "within a few seconds") fails here; one that waits for events does not. Stops at
the first failing run and prints a JSON summary: runs passed, per-run seconds, the failing tests.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

# Files whose tests race real processes, timers or venues against the clock.
TIMING_SENSITIVE = (
    "tests/test_worker_crash.py",
    "tests/test_query_after_crash.py",
    "tests/test_worker_drain.py",
    "tests/test_direct_execution.py",
    "tests/test_workflow_lifecycle.py",
    "tests/test_workflow_outcomes.py",
    "tests/test_workflow_model.py",
    "tests/test_consumer.py",
    "tests/test_poller.py",
    "tests/test_sweep.py",
    "tests/test_emulator.py",
    "tests/test_venue_gate.py",
    "tests/test_dev_stack.py",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(TIMING_SENSITIVE))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    summary: dict = {"files": args.files, "runs_wanted": args.runs, "runs_passed": 0, "seconds": []}
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                     "-o", "addopts=", *args.files], capture_output=True, text=True)
            summary["seconds"].append(round(time.monotonic() - started, 1))
            tail = result.stdout.strip().splitlines()[-1:] or [""]
            print(f"run {run}: exit {result.returncode}: {tail[0]}", file=sys.stderr, flush=True)
            if result.returncode != 0:
                summary["failed"] = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
                summary["output_tail"] = result.stdout[-4000:]
                break
            summary["runs_passed"] = run
    finally:
        burner.kill()
        burner.wait()
    print(json.dumps(summary, indent=2))
    return 0 if summary["runs_passed"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
