"""OrderWorkflow on a real Temporal dev server with the simulated venue in real Redis."""
from decimal import Decimal

from oms.models import OrderState, OrderSnapshot
from tests.helpers import executions, make_signal, order_events, run_order, start_order


async def test_market_order_fills_and_publishes_everything_once(temporal_env, order_worker, task_queue, redis):
    snap = await run_order(temporal_env.client, task_queue, make_signal(quantity="0.1"))
    assert snap.state == OrderState.FILLED, snap.reason
    assert snap.filled_quantity == Decimal("0.1")
    assert snap.fees > 0 and snap.average_fill_price > 0
    states = [t.state for t in snap.transitions]
    assert states == [OrderState.CREATED, OrderState.VALIDATED, OrderState.SUBMITTED, OrderState.FILLED]
    events = await order_events(redis)
    assert [e["state"] for e in events] == [s.value for s in states]
    fills = await executions(redis)
    assert sum(Decimal(f["quantity"]) for f in fills) == Decimal("0.1")
    assert len({f["fill_id"] for f in fills}) == len(fills)
    cached = OrderSnapshot.model_validate_json(await redis.get(f"order:{snap.order_id}"))
    assert cached.state == OrderState.FILLED


async def test_denied_order_records_reason(temporal_env, order_worker, task_queue):
    snap = await run_order(temporal_env.client, task_queue, make_signal(symbol="NOPE/USDT"))
    assert snap.state == OrderState.DENIED
    assert "unknown_symbol" in snap.reason


async def test_limit_order_rests_then_cancel_by_update(temporal_env, order_worker, task_queue):
    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1")  # far below market
    handle = await start_order(temporal_env.client, task_queue, signal)
    # wait until accepted
    for _ in range(100):
        snap = await handle.query("status", result_type=OrderSnapshot)
        if snap.state == OrderState.ACCEPTED:
            break
        import asyncio
        await asyncio.sleep(0.05)
    assert snap.state == OrderState.ACCEPTED
    after = await handle.execute_update("cancel_order", {"reason": "test"}, result_type=OrderSnapshot)
    assert after.state == OrderState.CANCELLED
    assert (await handle.result()).state == OrderState.CANCELLED
