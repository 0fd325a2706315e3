"""The contract-coverage plugin's own parts: which subprocess is which `tom` command, and what a
workflow history says (read from a real history of the dev server)."""
import sys

from activities.venues.simulated import FAULTS_KEY
from google.protobuf.json_format import MessageToDict
from tests import contract_coverage
from tests.contract_coverage import OBSERVED, cli_command, read_history_events
from tests.helpers import make_signal, run_order


def test_cli_command_of_an_argv():
    assert cli_command([sys.executable, "-m", "workers.cli", "--config", "c.yaml", "submit", "--wait"]) == "submit"
    assert cli_command(["/venv/bin/tom", "exchange-emulator", "--venue", "bybit"]) == "exchange-emulator"
    assert cli_command([sys.executable, "-m", "workers.cli", "--config", "status", "orders"]) == "orders"
    assert cli_command([sys.executable, "-m", "pytest", "submit"]) is None
    assert cli_command("tom submit") is None  # a shell string is not parsed


def test_required_items_come_from_the_code():
    from oms.validation import DenialReason
    from workers.cli import COMMANDS

    required = contract_coverage.required()
    assert required["denial_reasons"] == [r.value for r in DenialReason]
    assert required["cli_commands"] == list(COMMANDS)


async def test_a_history_yields_its_states_and_venue_answers(temporal_env, order_worker, task_queue, redis):
    await redis.hset(FAULTS_KEY, "reject_next", 1)
    snap = await run_order(temporal_env.client, task_queue, make_signal())
    history = await temporal_env.client.get_workflow_handle(snap.order_id).fetch_history()
    before = {name: counter.copy() for name, counter in OBSERVED.seen.items()}
    read_history_events([MessageToDict(e) for e in history.events])
    grew = {name: OBSERVED.seen[name] - before[name] for name in before}
    assert set(grew["order_states"]) == {"created", "validated", "submitted", "rejected"}
    assert set(grew["venue_error_types"]) == {"VenueRejected"} and not grew["venue_statuses"]
