"""Determinism: workflow histories replayed with the SDK's Replayer against the current code.

`tests/histories/*.json` are histories recorded from real runs (refresh them with
TOM_RECORD_HISTORIES=1 when a change is deliberately incompatible, and version the workflow
instead if orders may be running). A non-deterministic change fails here before it reaches them.
"""
import asyncio
import os
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.venue_sim import FAULTS_KEY
from oms.models import OrderSnapshot, OrderState
from tests.helpers import make_signal, start_order
from workflows.order import OrderWorkflow

HISTORIES = Path(__file__).parent / "histories"


async def each(histories):
    for history in histories:
        yield history


def replayer() -> Replayer:
    return Replayer(workflows=[OrderWorkflow], data_converter=pydantic_data_converter)


async def test_recorded_histories_replay_on_current_code():
    files = sorted(HISTORIES.glob("*.json"))
    assert len(files) >= 4, "recorded histories are missing"
    histories = [WorkflowHistory.from_json(f.stem, f.read_text()) for f in files]
    results = await replayer().replay_workflows(each(histories), raise_on_replay_failure=False)
    failures = {wid: str(err) for wid, err in results.replay_failures.items()}
    assert not failures, failures


async def scenario_handles(client, queue, redis):
    """Market fill, lost ack + reconcile, resting limit amended then cancelled, denial."""
    market = await start_order(client, queue, make_signal(signal_id="replay-market", quantity="0.1"))
    await market.result()
    await redis.hset(FAULTS_KEY, "lost_ack_next", 1)
    unknown = await start_order(client, queue, make_signal(signal_id="replay-unknown", quantity="0.1"))
    await unknown.result()
    limit = await start_order(client, queue, make_signal(signal_id="replay-amend", order_type="limit",
                                                         limit_price="1000.00", quantity="0.1"))
    for _ in range(100):
        if (await limit.query("status", result_type=OrderSnapshot)).state == OrderState.ACCEPTED:
            break
        await asyncio.sleep(0.05)
    await limit.execute_update("amend_order", {"limit_price": "1001.00"}, result_type=OrderSnapshot)
    await limit.signal("amend", {"quantity": "0.2"})
    await limit.execute_update("cancel_order", {"reason": "replay"}, result_type=OrderSnapshot)
    denied = await start_order(client, queue, make_signal(signal_id="replay-denied", symbol="NOPE/USDT"))
    await denied.result()
    return [market, unknown, limit, denied]


async def test_fresh_histories_replay(temporal_env, order_worker, task_queue, redis):
    handles = await scenario_handles(temporal_env.client, task_queue, redis)
    histories = [await h.fetch_history() for h in handles]
    results = await replayer().replay_workflows(each(histories), raise_on_replay_failure=False)
    assert not results.replay_failures, results.replay_failures
    if os.environ.get("TOM_RECORD_HISTORIES") == "1":
        HISTORIES.mkdir(exist_ok=True)
        for handle, history in zip(handles, histories):
            (HISTORIES / f"{handle.id}.json").write_text(history.to_json())
