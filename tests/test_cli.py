"""Every `tom` client command as a user runs it: a subprocess (`python -m workers.cli --config ...`)
against the session's Temporal dev server and Redis, its output and exit code checked.

The order commands run against the production worker (`order_worker`) in this process; `orders`
and `report` read through `tom api` and, with the API stopped, fall back to Temporal visibility and
to the DuckDB file the API's recorder wrote. `worker`, `consume`, `api` and `dev` are run as
processes by test_worker_drain.py, test_consumer.py, test_api.py and test_dev_stack.py.
"""
import asyncio
import json
import re
import uuid
from decimal import Decimal

from oms.events import SIGNAL_FIELD
from oms.models import OrderSnapshot, OrderState, Signal
from tests.conftest import free_port, run_tom, stop_api, stop_process, tom_process, wait_for_http
from tests.emulators import CONFIG as EMULATOR_CONFIG
from tests.helpers import make_signal, start_order

S = OrderState


def one_line_error(result, command: str, expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith(f"tom {command}: ") and expected in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


async def test_submit_wait_status_amend_cancel(temporal_env, order_worker, config_file):
    sid = f"cli-{uuid.uuid4().hex[:8]}"
    waited = await asyncio.to_thread(run_tom, config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy",
                                     "--quantity", "0.1", "--signal-id", sid, "--wait")
    assert waited.returncode == 0, waited.stderr
    lines = waited.stdout.splitlines()
    assert lines[0] == f"order-{sid} started"
    assert f"order       order-{sid}" in lines and "state       filled" in lines, waited.stdout
    assert "filled      0.1 @ " in waited.stdout and waited.stderr == ""
    assert "costs       arrival slippage " in waited.stdout
    assert re.search(r"^latency .*sent_to_ack [0-9.]+ ms", waited.stdout, re.M), waited.stdout

    again = await asyncio.to_thread(run_tom, config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy",
                                    "--quantity", "0.1", "--signal-id", sid)
    assert again.returncode == 0 and again.stdout.strip() == f"order-{sid} already exists", again

    rest = f"cli-{uuid.uuid4().hex[:8]}"
    placed = await asyncio.to_thread(run_tom, config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy",
                                     "--quantity", "0.1", "--order-type", "limit", "--limit-price", "1000.00",
                                     "--signal-id", rest)
    assert placed.returncode == 0 and placed.stdout.strip() == f"order-{rest} started", placed
    handle = temporal_env.client.get_workflow_handle(f"order-{rest}", result_type=OrderSnapshot)
    from tests.test_workflow_lifecycle import wait_for_state

    await wait_for_state(handle, {S.ACCEPTED})

    shown = await asyncio.to_thread(run_tom, config_file, "status", f"order-{rest}")
    assert shown.returncode == 0 and "state       accepted" in shown.stdout.splitlines(), shown
    assert "type        limit GTC @ 1000.00" in shown.stdout
    assert "routing     simulation: the only venue configured" in shown.stdout.splitlines(), shown.stdout
    as_json = await asyncio.to_thread(run_tom, config_file, "status", f"order-{rest}", "--json")
    assert as_json.returncode == 0
    assert OrderSnapshot.model_validate_json(as_json.stdout).state == S.ACCEPTED

    amended = await asyncio.to_thread(run_tom, config_file, "amend", f"order-{rest}", "--price", "1001.00",
                                      "--quantity", "0.2")
    assert amended.returncode == 0, amended.stderr
    assert "type        limit GTC @ 1001.00" in amended.stdout and "buy 0.2 ETH/USDT" in amended.stdout
    snap = await handle.query("status", result_type=OrderSnapshot)
    assert snap.limit_price == Decimal("1001.00") and snap.quantity == Decimal("0.2")
    one_line_error(await asyncio.to_thread(run_tom, config_file, "amend", f"order-{rest}", "--price", "1001.001"),
                   "amend", "not a multiple of the tick size")
    one_line_error(await asyncio.to_thread(run_tom, config_file, "amend", f"order-{rest}", "--quantity", "-1"),
                   "amend", "")

    cancelled = await asyncio.to_thread(run_tom, config_file, "cancel", f"order-{rest}", "--reason", "from the cli")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "state       cancelled (from the cli)" in cancelled.stdout.splitlines()
    assert (await handle.result()).state == S.CANCELLED
    one_line_error(await asyncio.to_thread(run_tom, config_file, "cancel", f"order-{rest}"),
                   "cancel", "order is already cancelled")
    one_line_error(await asyncio.to_thread(run_tom, config_file, "status", "order-no-such-order"),
                   "status", "no order order-no-such-order")


async def test_submit_refuses_a_bad_signal_and_an_unreachable_temporal(config_file, stack_settings, tmp_path):
    one_line_error(await asyncio.to_thread(run_tom, config_file, "submit", "--symbol", "ETH/USDT", "--side", "buy",
                                           "--quantity", "-3"), "submit", "invalid signal")
    one_line_error(await asyncio.to_thread(run_tom, config_file, "submit", "--symbol", "ETH/USDT"),
                   "submit", "give --file, or --symbol, --side and --quantity")
    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text(stack_settings.with_overrides(temporal={
        **stack_settings.temporal.model_dump(mode="json"), "address": f"127.0.0.1:{free_port()}"}).to_yaml())
    one_line_error(await asyncio.to_thread(run_tom, nowhere, "submit", "--symbol", "ETH/USDT", "--side", "buy",
                                           "--quantity", "0.1"), "submit", "cannot reach Temporal")


async def test_submit_from_a_file_and_through_the_stream(temporal_env, order_worker, config_file, redis, tmp_path):
    signals = [make_signal(quantity="0.1"), make_signal(side="sell", quantity="0.2")]
    path = tmp_path / "signals.json"
    path.write_text(json.dumps([json.loads(s.model_dump_json(exclude_none=True)) for s in signals]))
    result = await asyncio.to_thread(run_tom, config_file, "submit", "--file", str(path), "--wait")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.endswith(" started")] == [
        f"{s.workflow_id} started" for s in signals]
    assert result.stdout.count("state       filled") == 2
    for s in signals:
        final = await temporal_env.client.get_workflow_handle(s.workflow_id, result_type=OrderSnapshot).result()
        assert final.state == S.FILLED and final.quantity == s.quantity

    one = make_signal(quantity="0.3")
    single = tmp_path / "one.json"
    single.write_text(one.model_dump_json(exclude_none=True))
    streamed = await asyncio.to_thread(run_tom, config_file, "submit", "--file", str(single), "--via", "stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == f"published {one.workflow_id} to signals"
    [(_, fields)] = await redis.xrange("signals")
    assert Signal.model_validate_json(fields[SIGNAL_FIELD]).signal_id == one.signal_id

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    one_line_error(await asyncio.to_thread(run_tom, config_file, "submit", "--file", str(broken)),
                   "submit", f"cannot read signals from {broken}")


async def test_orders_and_report_through_the_api_then_their_fallbacks(temporal_env, order_worker, config_file,
                                                                      stack_settings, task_queue, tmp_path):
    strategy = f"cli-{uuid.uuid4().hex[:6]}"
    signals = [make_signal(strategy_id=strategy, quantity="0.1") for _ in range(2)]
    signals.append(make_signal(strategy_id=strategy, quantity="0.1", order_type="limit", limit_price="1000.00"))
    api = tom_process(config_file, "api", log_path=tmp_path / "api.log")
    try:
        wait_for_http(f"http://127.0.0.1:{stack_settings.service.port}/healthz", timeout=60, proc=api)
        handles = [await start_order(temporal_env.client, task_queue, s) for s in signals]
        await asyncio.gather(*(h.result() for h in handles[:2]))
        from tests.test_workflow_lifecycle import wait_for_state

        await wait_for_state(handles[2], {S.ACCEPTED})
        ids = sorted(s.workflow_id for s in signals)

        deadline = asyncio.get_running_loop().time() + 60
        while True:  # the recorder writes the database behind the workflows
            listed = await asyncio.to_thread(run_tom, config_file, "orders", "--strategy", strategy, "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)
            if sorted(r["order_id"] for r in rows) == ids and {r["state"] for r in rows} == {"filled", "accepted"}:
                break
            assert asyncio.get_running_loop().time() < deadline, f"the API never listed {ids}: {rows}"
            await asyncio.sleep(0.5)
        table = await asyncio.to_thread(run_tom, config_file, "orders", "--strategy", strategy, "--state", "filled")
        assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("ORDER ")
        assert sorted(line.split()[0] for line in table.stdout.splitlines()[1:]) == sorted(ids[:0] + [
            s.workflow_id for s in signals[:2]])
        via_api = await asyncio.to_thread(run_tom, config_file, "report", "--json")
        assert via_api.returncode == 0, via_api.stderr
        report = json.loads(via_api.stdout)
        assert report["orders"] == 3 and report["states"] == {"filled": 2, "accepted": 1}
        usdt = report["summary"][0]
        assert usdt["quote_currency"] == "USDT" and usdt["outcomes"]["success"] == 2 and usdt["outcomes"]["open"] == 1
        assert usdt["success_rate"] == "1.000000" and Decimal(usdt["notional"]) > 0
        filled = [r for r in rows if r["state"] == "filled"]  # each carries its TCA, from the workflow
        assert all(r["tca"]["arrival_price"] and r["tca"]["latency"]["sent_to_ack_ms"] is not None
                   and r["tca"]["fill_ratio"] == "1" for r in filled), filled
        text = await asyncio.to_thread(run_tom, config_file, "report")
        assert text.returncode == 0 and text.stdout.startswith("orders 3 (+0 parents); states: accepted 1, filled 2")
        assert "exchange performance" in text.stdout
    finally:
        stop_api(api, tmp_path / "api.log")  # a clean stop, checked

    # No API: `orders` lists through Temporal visibility (search attributes, then each order's query).
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # visibility is eventually consistent
        fallback = await asyncio.to_thread(run_tom, config_file, "orders", "--strategy", strategy, "--json")
        assert fallback.returncode == 0, fallback.stderr
        rows = json.loads(fallback.stdout)
        if sorted(r["order_id"] for r in rows) == ids:
            break
        assert asyncio.get_running_loop().time() < deadline, f"visibility never listed {ids}: {rows}"
        await asyncio.sleep(0.5)
    accepted = await asyncio.to_thread(run_tom, config_file, "orders", "--strategy", strategy, "--state", "accepted")
    assert accepted.returncode == 0 and [line.split()[0] for line in accepted.stdout.splitlines()[1:]] == [
        signals[2].workflow_id]
    # ... and `report` reads the DuckDB file the recorder left, read-only: the same document.
    offline = await asyncio.to_thread(run_tom, config_file, "report", "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == report
    await handles[2].signal("cancel", {})
    await handles[2].result()

    nothing = tmp_path / "nothing.yaml"
    nothing.write_text(stack_settings.with_overrides(database={"type": "duckdb", "path": str(tmp_path / "none.duckdb")})
                       .to_yaml())
    one_line_error(await asyncio.to_thread(run_tom, nothing, "report"), "report",
                   "the API is not running and there is no local database to read")


async def test_demo_feeds_signals_and_summarises_their_outcome(temporal_env, stack_settings, tmp_path, redis):
    """The demo on two simulated venues (`tom dev`'s): beside its usual signals, an order the router
    splits across both venues and a TWAP, both followed to `filled` and shown with their children."""
    from workers.consumer import SignalConsumer
    from workers.dev import DEV_SIMULATED_VENUES
    from workers.worker import running_worker

    e = stack_settings.execution
    settings = stack_settings.with_overrides(  # `tom dev`'s venues and order value limit
        execution={**e.model_dump(mode="json"), "simulation": {**e.simulation.model_dump(mode="json"),
                                                               "venues": DEV_SIMULATED_VENUES}},
        account_limits={**stack_settings.account_limits.model_dump(mode="json"), "max_order_value": 1000})
    config_file = tmp_path / "demo.yaml"
    config_file.write_text(settings.to_yaml())
    stop = asyncio.Event()
    async with running_worker(temporal_env.client, settings, redis):
        consumer = asyncio.create_task(SignalConsumer(temporal_env.client, redis, settings, name="demo").run(stop))
        try:
            result = await asyncio.to_thread(run_tom, config_file, "demo", "--orders", "10", "--rate", "50",
                                             "--timeout", "120", timeout=180)
        finally:
            stop.set()
            await consumer
    assert result.returncode == 0, (result.stdout, result.stderr)
    # Ten signals: one malformed (dead-lettered), nine orders followed to a terminal state.
    assert "demo: publishing 10 signals to stream 'signals'" in result.stdout
    summary = next(line for line in result.stdout.splitlines() if line.startswith("demo: 9/9 orders terminal"))
    assert "filled" in summary
    assert "dead letters so far: 1 (stream signals.dead)" in result.stdout
    # The split: a parent with children on both venues, terminal. The router gives the thin venue
    # all its depth within the collar; when the price moves up between the plan and the child, that
    # venue holds a little less (its levels are notional), and what no child may carry (below the
    # minimums) ends the parent `expired` a hair short: at most 1 % here.
    split = next(line for line in result.stdout.splitlines() if "-split: " in line).strip()
    found = re.search(r"^split order-demo-\w+-split: (filled|expired) ([0-9.]+)/([0-9.]+), (\d+) children on "
                      r"simulation, simulation-b: ", split)
    assert found and int(found[4]) >= 2, split
    assert Decimal(found[2]) >= Decimal(found[3]) * Decimal("0.99") and (found[1] == "filled") == (found[2] == found[3])
    # Each child ended on its venue; the one a price move left a hair short is the only non-filled one.
    children = re.findall(r"order-demo-\w+-split-c\d+ (simulation\S*) ([0-9.]+)/([0-9.]+) (filled|expired)", split)
    assert {venue for venue, *_ in children} == {"simulation", "simulation-b"}, split
    for venue, filled, quantity, state in children:
        assert (state == "filled") == (filled == quantity) and Decimal(filled) >= Decimal(quantity) * Decimal("0.99"), split
    twap = next(line for line in result.stdout.splitlines() if "-twap: " in line).strip()
    assert re.search(r"^twap order-demo-\w+-twap: filled ([0-9.]+)/\1, 3 children on ", twap), twap
    assert twap.count(" filled") == 4, twap
    # No API in this test: the demo says where its report's figures will be, in one line.
    assert "demo report: the API at http://127.0.0.1:" in result.stdout
    assert await redis.xlen("signals.dead") == 1


def test_exchange_emulator_serves_its_venue_and_stops_cleanly(tmp_path):
    import httpx

    port = free_port()
    proc = tom_process(EMULATOR_CONFIG, "exchange-emulator", "--venue", "bybit", "--port", str(port),
                       "--delay-ms", "300", log_path=tmp_path / "emulator.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_emulator/health", timeout=60, proc=proc)
        assert httpx.get(f"http://127.0.0.1:{port}/_emulator/health").json()["venue"] == "bybit"
        server_time = httpx.get(f"http://127.0.0.1:{port}/v5/market/time", timeout=10)
        assert server_time.status_code == 200 and server_time.json()["retCode"] == 0
        assert server_time.elapsed.total_seconds() >= 0.3  # --delay-ms is honoured on venue requests
    finally:
        assert stop_process(proc) == 0
    bad = tom_process(EMULATOR_CONFIG, "exchange-emulator", "--venue", "kraken", log_path=tmp_path / "bad.log")
    assert bad.wait(60) == 2 and "invalid choice: 'kraken'" in (tmp_path / "bad.log").read_text()
