"""A small chaos run in the suite (bench/chaos.py is the full one): direct mode through the real ccxt
client to a Binance emulator that loses answers, while the worker is SIGKILLed three times and
Temporal and Redis are restarted once each; nothing lost, nothing placed or filled twice."""
from bench.chaos import run


async def test_small_chaos_run_accounts_for_every_order_and_fill():
    result = await run(orders=80, kills=3, rate=20, seed=7, deadline_s=150)
    assert result["kills"] == 3 and result["temporal_restarts"] == 1 and result["redis_restarts"] == 1
    checks = ("lost", "duplicate_venue_orders", "not_terminal", "fills_missing", "fills_duplicated",
              "fill_quantity_mismatch")
    assert {k: result[k] for k in checks} == dict.fromkeys(checks, 0), result
    assert result["states"].get("filled", 0) >= 60 and result["venue_orders"] == 80, result
