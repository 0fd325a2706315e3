"""A `tom worker` SIGKILLed in the middle of a TWAP, then restarted: the schedule goes on, no slice is
lost or placed twice (one venue order per child, each fill published once); `tom status` and
`tom orders` then show the parent with its children."""
import asyncio
import json
import os
import signal
from decimal import Decimal

from oms.models import OrderSnapshot, OrderState
from tests.conftest import run_tom, stop_process, tom_process
from tests.helpers import executions, make_signal
from workers.intake import start_order

D = Decimal


async def test_sigkill_mid_twap_loses_and_duplicates_nothing(temporal_env, stack_settings, config_file, redis, tmp_path):
    strategy = f"crash-{os.getpid()}-{id(tmp_path) % 10_000}"
    signal_ = make_signal(quantity="0.6", strategy_id=strategy, execution={"algo": "twap", "slices": 6, "duration_s": 9})
    parent_id = signal_.workflow_id
    worker = tom_process(config_file, "worker", log_path=tmp_path / "worker-1.log")
    try:
        assert (await start_order(temporal_env.client, stack_settings, signal_)).created
        # Kill once the second slice's child has reached the venue, whenever the worker got there.
        deadline = asyncio.get_running_loop().time() + 60
        while not await redis.exists(f"sim:simulation:order:{parent_id}-c2"):
            assert worker.poll() is None, f"the worker exited with {worker.returncode}"
            assert asyncio.get_running_loop().time() < deadline, "the second slice never reached the venue"
            await asyncio.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        worker = tom_process(config_file, "worker", log_path=tmp_path / "worker-2.log")
        handle = temporal_env.client.get_workflow_handle(parent_id, result_type=OrderSnapshot)
        final = await asyncio.wait_for(handle.result(), 120)
        # Shown while a worker runs: a finished workflow's `status` query needs one.
        shown = run_tom(config_file, "status", parent_id)
        child_shown = run_tom(config_file, "status", f"{parent_id}-c3", "--json")
        listed = run_tom(config_file, "orders", "--json", "--strategy", strategy)  # no API: Temporal visibility
    finally:
        stop_process(worker)

    assert final.state == OrderState.FILLED and final.filled_quantity == D("0.6"), final.reason
    ids = [c.order_id for c in final.children]
    assert ids == [f"{parent_id}-c{n}" for n in range(1, 7)]
    assert sum(c.quantity for c in final.children) == D("0.6")
    venue_orders = sorted(k.rsplit(":", 1)[1] for k in [k async for k in redis.scan_iter("sim:simulation:order:*")])
    assert venue_orders == sorted(ids)  # one venue order per child: none lost, none twice
    fills = await executions(redis)
    assert len({f["fill_id"] for f in fills}) == len(fills)
    for child in final.children:
        venue = json.loads(await redis.get(f"sim:simulation:order:{child.order_id}"))
        placed = sum((D(str(f["quantity"])) for f in venue["fills"]), D(0))
        published = sum((D(f["quantity"]) for f in fills if f["order_id"] == child.order_id), D(0))
        assert placed == published == child.filled_quantity == child.quantity


    assert shown.returncode == 0, shown.stderr
    assert "algorithm   twap: 6 children" in shown.stdout
    for n in range(1, 7):
        assert f"{parent_id}-c{n}" in shown.stdout
    assert json.loads(child_shown.stdout)["parent_order_id"] == parent_id
    assert listed.returncode == 0, listed.stderr
    rows = {row["order_id"]: row for row in json.loads(listed.stdout)}
    assert [c["order_id"] for c in rows[parent_id]["children"]] == ids
    assert {i for i in rows if i != parent_id} <= set(ids)
    assert all(rows[i]["parent_order_id"] == parent_id for i in rows if i != parent_id)
