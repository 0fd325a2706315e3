"""`python -m bench.routing` runs and reports the router against the best single venue (small run:
real emulators and the real ccxt client, no orders through Temporal; the full run adds those)."""
import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_routing_small_run_reports_no_worse_plan_and_savings():
    out = subprocess.run([sys.executable, "-m", "bench.routing", "--sizes", "9", "--stack-orders", "0",
                          "--twaps", "1", "--twap-slices", "2", "--twap-duration", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["orders"] == 18 and result["split_orders"] > 0
    assert result["worse_than_best_single_venue"] == 0
    assert result["orders_beyond_top_level_with_single_venue"] > 0
    assert result["saved_bps_vs_best_single_venue_median"] > 0
    # ... and the TWAP schedule figure (small: one TWAP of 2 slices; its size is not asserted here).
    twap = result["twap_schedule"]
    assert twap["slices_measured"] == 2 and twap["children_sum_exactly"] is True, twap
    assert result["schedule_error_ms_p99"] == twap["schedule_error_ms_p99"] is not None
