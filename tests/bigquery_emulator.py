"""The BigQuery emulator (PyPI bqemulator) for the storage tests: one per session, on free ports.

It needs duckdb 1.5.5 while the project runs a newer one, so it lives in `.venv-bqemulator`, which
`python3 bootstrap.py setup` (and `test`) makes from tests/bqemulator-requirements.txt. The real
google-cloud-bigquery client talks to its REST port with anonymous credentials
(`database.emulator_host`). Without that virtualenv the BigQuery tests skip saying so, except under
CI (CI=true), where a skip would hide a missing check.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TOM_BQEMULATOR_VENV", REPO / ".venv-bqemulator"))
PROJECT = "tom-test"
# The emulator loads DuckDB's spatial extension at start and cannot download it offline: install it
# (and avro) from the wheels in its virtualenv into DuckDB's extension directory first.
_INSTALL_EXTENSIONS = ("import duckdb_extensions as d; "
                       "[d.import_extension(name) for name in ('spatial', 'avro')]")


def _absent(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the BigQuery storage tests")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bigquery_emulator() -> Iterator[str]:
    """The emulator's REST endpoint (http://127.0.0.1:PORT), for `database.emulator_host`."""
    from tests.conftest import free_port, stop_process, wait_for_http  # conftest imports this module

    binary = VENV / "bin" / "bqemulator"
    if not binary.exists():
        _absent(f"no BigQuery emulator at {binary}: run `python3 bootstrap.py setup`")
    subprocess.run([str(VENV / "bin" / "python"), "-c", _INSTALL_EXTENSIONS], check=True, timeout=120,
                   capture_output=True)
    rest, grpc = free_port(), free_port()
    log_path = Path(tempfile.mkdtemp(prefix="tom-bqemulator-")) / "bqemulator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(binary), "start", "--rest-port", str(rest), "--grpc-port", str(grpc),
                                 "--ephemeral", "--project", PROJECT, "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{rest}"
    try:
        wait_for_http(f"{url}/readyz", timeout=90, proc=proc)
    except Exception:
        stop_process(proc, timeout=10, expect=None)
        raise RuntimeError(f"the BigQuery emulator did not start: {log_path.read_text()[-2000:]}") from None
    yield url
    stop_process(proc, timeout=20, expect=None)
