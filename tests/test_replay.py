"""Determinism: recorded workflow histories replayed with the SDK's Replayer against the current code.

`tests/histories/<release>/*.json` are histories recorded from real runs by each release with
`python -m tests.record_histories --out tests/histories/<release>` (see that module): every path of
OrderWorkflow, in simulation and direct mode. They are never re-recorded to make this pass: a
change that alters the commands an existing history produces is guarded with `workflow.patched`.
tests/test_replay_mutation.py checks that these histories notice a change on almost every branch.
The fresh-history test below only checks that today's code replays its own runs.
"""
import asyncio
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities.venues.simulated import FAULTS_KEY
from oms.models import OrderSnapshot, OrderState
from tests.helpers import make_signal, start_order
from tests.replay_mutation import installed_workflows
from workers.worker import workflow_runner

HISTORIES = Path(__file__).parent / "histories"
WORKFLOWS = installed_workflows()  # every workflow in workflows/, so any recorded type replays


def history_files(root: Path = HISTORIES) -> list[Path]:
    return sorted(root.rglob("*.json"))


def load_history(path: Path) -> WorkflowHistory:
    """A file is named after its workflow id (`@runN` marks one run of a continue-as-new chain)."""
    return WorkflowHistory.from_json(path.stem.split("@")[0], path.read_text())


async def each(histories):
    for history in histories:
        yield history


def replayer(**kwargs) -> Replayer:
    """In the sandbox as the worker runs it (workers.worker.workflow_runner)."""
    return Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter,
                    workflow_runner=workflow_runner(sandbox=True), **kwargs)


async def replay_failures(histories: list[tuple[str, WorkflowHistory]], **kwargs) -> dict[str, str]:
    """name -> replay error, for each history that does not replay (one at a time: names may share a
    workflow id)."""
    failures = {}
    async with replayer(**kwargs).workflow_replay_iterator(each([h for _, h in histories])) as results:
        names = iter([name for name, _ in histories])
        async for result in results:
            name = next(names)
            if result.replay_failure is not None:
                failures[name] = str(result.replay_failure)
    return failures


async def test_recorded_histories_replay_on_current_code():
    files = history_files()
    assert len(files) >= 4, "recorded histories are missing"
    releases = {f.parent.name for f in files}
    assert "release-0.1" in releases, releases
    failures = await replay_failures([(str(f.relative_to(HISTORIES)), load_history(f)) for f in files])
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
    failures = await replay_failures([(h.id, history) for h, history in zip(handles, histories)])
    assert not failures, failures
