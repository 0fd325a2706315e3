"""A small chaos run in the suite (bench/chaos.py is the full one): direct mode through the real ccxt
client to Binance and Bybit emulators that lose answers, on one-level books (partial fills ended by
the venue), with amends and cancels, while the worker is SIGKILLed three times and Temporal and Redis
are restarted once each; nothing lost, nothing placed or filled twice, nothing left live."""
from bench.chaos import run


async def test_small_chaos_run_accounts_for_every_order_and_fill():
    result = await run(orders=80, kills=3, rate=20, seed=7, deadline_s=150)
    assert result["kills"] == 3 and result["temporal_restarts"] == 1 and result["redis_restarts"] == 1
    checks = ("lost", "duplicate_venue_orders", "live_venue_orders", "not_terminal", "fills_missing",
              "fills_duplicated", "fill_quantity_mismatch", "replay_failures")
    assert {k: result[k] for k in checks} == dict.fromkeys(checks, 0), result
    assert result["states"].get("filled", 0) >= 56 and result["venue_orders"] >= 80, result
    assert set(result["by_venue"]) == {"binance", "bybit"}, result
    # Every order beyond the depth was part filled with the rest ended by the venue (or, rarely, refused
    # by it for the account's balance after the earlier ones).
    beyond = result["beyond_depth_states"]
    assert result["partial_then_ended"] + beyond.get("rejected", 0) == 8 and result["partial_then_ended"] >= 6, result
    assert set(beyond) <= {"cancelled", "expired", "rejected"}, result
    assert result["amends"] >= 2 and result["amended"] >= 2 and result["mid_run_cancels"] >= 2, result
    assert set(result["amended_by_venue"]) == {"binance", "bybit"}, result  # native and cancel-and-replace
