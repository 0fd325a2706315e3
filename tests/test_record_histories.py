"""The recording command keeps working for the next release: a few scenarios recorded by
`python -m tests.record_histories` as a process, and what it wrote replays on the current code."""
import subprocess
import sys

from tests.conftest import REPO
from tests.record_histories import SCENARIOS
from tests.test_replay import load_history, replay_failures


async def test_the_recording_command_writes_histories_that_replay(tmp_path):
    out = tmp_path / "release-x"
    names = ["sim-market-fill", "sim-denied-unknown-symbol", "sim-continue-as-new", "binance-market-fill"]
    assert set(names) <= set(SCENARIOS)
    done = subprocess.run([sys.executable, "-m", "tests.record_histories", "--out", str(out), "--only", *names],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "4 recorded, 0 failed" in done.stdout
    files = sorted(out.glob("*.json"))
    stems = [f.stem for f in files]
    for name in names:
        assert any(stem.startswith(f"order-rec-{name}-") for stem in stems), (name, stems)
    assert sum("@run" in stem for stem in stems) >= 2  # the continued-as-new order: one file per run
    failures = await replay_failures([(f.name, load_history(f)) for f in files])
    assert not failures, failures


def test_unknown_scenarios_are_refused():
    done = subprocess.run([sys.executable, "-m", "tests.record_histories", "--out", "/nonexistent/x", "--only",
                           "no-such-scenario"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown scenarios: no-such-scenario" in done.stderr
