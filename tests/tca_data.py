"""Hand-built orders with known costs, for the TCA, report, view and HTML tests.

Every figure the tests expect is worked out by hand in the comments next to the order.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from oms.events import OrderEvent
from oms.models import OrderSnapshot, OrderState, Transition
from oms.tca import MarketPoint, order_tca, pre_trade

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
DAY2 = datetime(2026, 3, 3, 9, 0, tzinfo=timezone.utc)


def order(order_id: str, *, side: str, quantity: str, filled: str, average: str | None, fees: str,
          path: list[tuple[str, int, str | None]], symbol: str = "BTC/USDT", exchange: str = "binance",
          strategy: str = "momentum", decision: str | None = None, arrival: str | None = None,
          estimated_fee: str | None = None, estimated_slippage_bps: str | None = None,
          algorithm: str | None = None, start: datetime = T0, signal_ms: int | None = -50) -> OrderSnapshot:
    """`path`: (state, ms after start, reason) in order; the order starts `created` at `start`."""
    transitions = [Transition(state=OrderState.CREATED, at=start)]
    transitions += [Transition(state=OrderState(s), at=start + timedelta(milliseconds=ms), reason=r)
                    for s, ms, r in path]
    snap = OrderSnapshot(
        order_id=order_id, signal_id=order_id.removeprefix("order-"), strategy_id=strategy,
        client_order_id=order_id[:36], symbol=symbol, side=side, order_type="market", time_in_force="IOC",
        quantity=D(quantity), state=transitions[-1].state, filled_quantity=D(filled),
        average_fill_price=D(average) if average else None, fees=D(fees), exchange=exchange,
        reference_price=D(decision) if decision else None, created_at=start, updated_at=transitions[-1].at,
        transitions=transitions)
    inputs = pre_trade(symbol, D(decision) if decision else None, D(arrival) if arrival else None,
                       start + timedelta(milliseconds=signal_ms) if signal_ms is not None else None, algorithm,
                       D(estimated_fee) if estimated_fee else None,
                       D(estimated_slippage_bps) if estimated_slippage_bps else None)
    snap.tca = order_tca(snap, inputs)
    return snap


FILLED = [("validated", 5, None), ("submitted", 10, None), ("accepted", 40, None), ("filled", 100, None)]
PARTIAL_CANCELLED = [("validated", 5, None), ("submitted", 10, None), ("accepted", 30, None),
                     ("partially_filled", 200, None), ("pending_cancel", 900, "done"),
                     ("cancelled", 1000, "done")]

# A buy, all filled: decision 100, arrival 101, average 101.5, fees 0.406 (0.2 % of 203).
#   notional 203; arrival slippage -(101.5-101)*2 = -1 -> -1/202 = -49.5050 bps; fee impact -20 bps;
#   shortfall: delay -(101-100)*2 = -2, execution -1, fees -0.406, opportunity 0 -> -3.406 = -170.3 bps of 200.
BUY = order("order-buy", side="buy", quantity="2", filled="2", average="101.5", fees="0.406", path=FILLED,
            decision="100", arrival="101", estimated_fee="0.404", estimated_slippage_bps="30")
# A sell of ETH/BTC (a second quote currency), a quarter filled, a maker rebate (negative fee):
#   decision 0.05, arrival 0.049, 1 of 4 at 0.0485, fee -0.0000097.
#   slippage -(-1)*(0.0485-0.049)*1 = -0.0005 -> -0.0005/0.049 = -102.0408 bps; fee impact +2 bps;
#   shortfall: delay -0.001, execution -0.0005, fees +0.0000097, opportunity (0.0485-0.05)*3 = -0.0045
#   -> -0.0059903 = -299.5150 bps of 0.2.
SELL = order("order-sell", side="sell", quantity="4", filled="1", average="0.0485", fees="-0.0000097",
             path=PARTIAL_CANCELLED, symbol="ETH/BTC", exchange="bybit", strategy="meanrev",
             decision="0.05", arrival="0.049", estimated_fee="0.00001", estimated_slippage_bps="0")
# Refused by the venue (sent, answered): a reject; and one denied by us (never sent).
REJECTED = order("order-rej", side="buy", quantity="1", filled="0", average=None, fees="0",
                 path=[("validated", 5, None), ("submitted", 10, None), ("rejected", 50, "insufficient balance")],
                 arrival="100", decision="100")
DENIED = order("order-den", side="buy", quantity="1", filled="0", average=None, fees="0",
               path=[("denied", 3, "max_order_value: too large")], decision="100", signal_ms=None)
# A submission that timed out, went unknown, and was found filled by reconciliation, on day 2.
UNKNOWN_THEN_FILLED = order(
    "order-unk", side="buy", quantity="1", filled="1", average="100", fees="0.1",
    path=[("validated", 5, None), ("submitted", 10, None), ("unknown", 5010, "submit outcome unknown: timeout"),
          ("filled", 6000, None)], arrival="100", decision="100", start=DAY2)

# A TWAP parent buying 10 SOL/USDT at decision 20 (arrival 20.05) through two children:
#   c1 4 @ 20.1 (fees 0.0804), c2 6 @ 20.2 (fees 0.1212): average (80.4 + 121.2) / 10 = 20.16.
#   Market path 20.0, 20.1, 20.2, 20.3 with volumes 1, 2, 3, 4: TWAP 20.15, VWAP 20.2;
#   vs TWAP -(20.16-20.15)/20.15 = -4.9628 bps; vs VWAP +19.8020 bps.
#   Parent arrival slippage -(20.16-20.05)*10 = -1.1 -> -1.1/200.5 = -54.8628 bps.
PARENT = order("order-twap", side="buy", quantity="10", filled="10", average="20.16", fees="0.2016",
               path=[("validated", 5, None), ("filled", 60_000, None)], symbol="SOL/USDT", decision="20",
               arrival="20.05", algorithm="twap")
CHILD1 = order("order-twap-c1", side="buy", quantity="4", filled="4", average="20.1", fees="0.0804", path=FILLED,
               symbol="SOL/USDT", decision="20", arrival="20.05", start=T0 + timedelta(seconds=1))
CHILD2 = order("order-twap-c2", side="buy", quantity="6", filled="6", average="20.2", fees="0.1212", path=FILLED,
               symbol="SOL/USDT", decision="20", arrival="20.15", start=T0 + timedelta(seconds=30))
PATH = [MarketPoint(at=T0 + timedelta(seconds=s), price=D(p), volume=D(v))
        for s, p, v in ((0, "20.0", 1), (20, "20.1", 2), (40, "20.2", 3), (59, "20.3", 4))]

ALL = [BUY, SELL, REJECTED, DENIED, UNKNOWN_THEN_FILLED, PARENT, CHILD1, CHILD2]


def events(snapshots: list[OrderSnapshot]) -> list[OrderEvent]:
    """Every transition as the recorder receives it (with the final snapshot: the newest wins)."""
    return [OrderEvent(event_id=f"{s.order_id}:{i}", order_id=s.order_id, state=t.state, at=t.at, reason=t.reason,
                       snapshot=s) for s in snapshots for i, t in enumerate(s.transitions)]
