"""The order's story as the Temporal UI shows it (oms/story.py): summary, details, current details."""
from datetime import datetime, timezone
from decimal import Decimal

from oms.models import FillRecord, OrderSnapshot, OrderState, Transition
from oms.story import DETAILS_FILLS_SHOWN, current_details, static_details, static_summary
from tests.helpers import make_signal


def _snapshot(**overrides) -> OrderSnapshot:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    data = dict(order_id="order-s1", signal_id="s1", strategy_id="momo-7", client_order_id="order-s1",
                symbol="BTC/USDT", side="sell", order_type="limit", time_in_force="GTC",
                quantity=Decimal("0.50"), limit_price=Decimal("61000.0"), exchange="binance",
                created_at=now, updated_at=now, transitions=[Transition(state=OrderState.CREATED, at=now)])
    data.update(overrides)
    return OrderSnapshot(**data)


def test_static_summary_and_details_name_the_terms():
    limit = make_signal(symbol="BTC/USDT", side="sell", quantity="0.50", order_type="limit",
                        limit_price="61000.0", exchange="binance", strategy_id="momo-7",
                        expire_at="2030-01-01T00:00:00Z")
    assert static_summary(limit) == "sell 0.5 BTC/USDT @ 61000 limit on binance"
    assert static_summary(make_signal(symbol="ETH/USDT", quantity="2")) == \
        "buy 2 ETH/USDT at market on the router's choice"
    details = static_details(limit)
    for part in ("**strategy**: momo-7", "**side**: sell", "**quantity**: 0.5", "**symbol**: BTC/USDT",
                 "**limit price**: 61000", "**venue**: binance", "**expire at**: 2030-01-01T00:00:00+00:00"):
        assert part in details, details


def test_current_details_headline_each_end_and_list_the_latest_fills():
    denied = _snapshot(state=OrderState.DENIED, reason="above_max_order_value: 30500 > 10000")
    text = current_details(denied)
    assert text.startswith("### DENIED by validation (never sent to a venue)")
    assert "reason: above_max_order_value: 30500 > 10000" in text and "fills" not in text
    assert current_details(_snapshot(state=OrderState.REJECTED)).startswith("### REJECTED by the venue")
    assert current_details(_snapshot(state=OrderState.PARTIALLY_FILLED)).startswith("### PARTIALLY FILLED")

    at = datetime(2026, 1, 2, 3, 5, tzinfo=timezone.utc)
    snap = _snapshot(state=OrderState.FILLED, filled_quantity=Decimal("0.5"), average_fill_price=Decimal("61000"),
                     fees=Decimal("1.25"), slippage_bps=Decimal("-0.50"))
    for i in range(DETAILS_FILLS_SHOWN + 2):
        snap.record_fill(FillRecord(trade_id=f"T{i}", quantity=Decimal("0.01"), price=Decimal("61000"),
                                    fee=Decimal("0.1"), fee_currency="USDT", liquidity="maker", at=at))
    text = current_details(snap)
    assert text.startswith("### FILLED") and "sell 0.5 of 0.5 BTC/USDT on binance, limit GTC @ 61000" in text
    assert "average price 61000, fees 1.25, slippage -0.5 bps" in text
    assert f"fills: {DETAILS_FILLS_SHOWN + 2} (latest {DETAILS_FILLS_SHOWN})" in text
    assert "- trade T11: 0.01 @ 61000, fee 0.1 USDT (maker)" in text and "trade T1:" not in text
