"""Parent orders on the real stack (Temporal dev server, simulated venue in real Redis): TWAP and
iceberg through intake, children as OrderWorkflows, cancel and amend on the parent, a refused
child's quantity worked again, continue-as-new of a long TWAP."""
import asyncio
from datetime import timedelta
from decimal import Decimal

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from activities.venues.simulated import FAULTS_KEY, SimulatedVenue
from oms.models import OrderSnapshot, OrderState, Signal
from oms.parent import ParentOrderInput
from oms.routing import RouteLeg, RoutePlan
from tests.helpers import executions, make_signal, order_events
from workers.intake import start_order

S = OrderState
D = Decimal


async def start_parent(client, settings, signal: Signal) -> WorkflowHandle:
    result = await start_order(client, settings, signal)
    assert result.created
    return client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot)


async def children_of(client, parent: OrderSnapshot) -> list[OrderSnapshot]:
    return [await client.get_workflow_handle(c.order_id, result_type=OrderSnapshot).result() for c in parent.children]


async def wait_until(handle: WorkflowHandle, check, timeout: float = 60) -> OrderSnapshot:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        snap = await handle.query("status", result_type=OrderSnapshot)
        if check(snap):
            return snap
        assert asyncio.get_running_loop().time() < deadline, f"condition not met: {snap.state} {snap.children}"
        await asyncio.sleep(0.1)


async def exists(client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
        return True
    except RPCError:
        return False


def twap(quantity: str, slices: int, duration_s: int, **extra) -> Signal:
    return make_signal(quantity=quantity, execution={"algo": "twap", "slices": slices, "duration_s": duration_s},
                       **extra)


async def test_twap_children_go_out_on_schedule_and_sum_exactly(temporal_env, order_worker, fast_settings, redis):
    signal = make_signal(quantity="0.5003", execution={"algo": "twap", "slices": 5, "duration_s": 6,
                                                       "randomize_pct": 20})
    handle = await start_parent(temporal_env.client, fast_settings, signal)
    final = await asyncio.wait_for(handle.result(), 90)
    assert final.state == S.FILLED, final.reason
    assert final.algo == "twap" and final.filled_quantity == D("0.5003")
    assert [c.order_id for c in final.children] == [f"{signal.workflow_id}-c{n}" for n in range(1, 6)]
    assert sum(c.quantity for c in final.children) == D("0.5003")
    assert all(c.quantity % D("0.0001") == 0 and c.state == S.FILLED for c in final.children)
    children = await children_of(temporal_env.client, final)
    assert all(c.parent_order_id == signal.workflow_id for c in children)
    assert all(c.client_order_id.startswith(c.order_id) or len(c.order_id) > 36 for c in children)
    # On schedule: a slice every 1.2 s (+-10 % randomized), the first at once; each child placed
    # within a generous bound of its own time on a loaded machine, and in order.
    started = final.transitions[1].at  # validated: the schedule starts then
    placed = [next(t.at for t in c.transitions if t.state == S.SUBMITTED) for c in children]
    assert placed == sorted(placed)
    for i, at in enumerate(placed):
        offset = (at - started).total_seconds()
        assert 1.2 * i - 0.12 * i - 0.5 <= offset <= 1.2 * i + 0.12 * i + 3, (i, offset)
    assert (placed[-1] - placed[0]).total_seconds() >= 3.5  # spread over the duration, not sent at once
    # Fills reach `executions` once, from the children only; the parent's average is theirs.
    fills = await executions(redis)
    assert {f["order_id"] for f in fills} == {c.order_id for c in children}
    assert sum(D(f["quantity"]) for f in fills) == D("0.5003")
    notional = sum(D(f["quantity"]) * D(f["price"]) for f in fills)
    assert abs(final.average_fill_price - notional / D("0.5003")) < D("0.000001")
    # Children are found by their parent in Temporal visibility (search attribute ParentOrderId).
    query = f"ParentOrderId = '{signal.workflow_id}'"
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        found = {w.id async for w in temporal_env.client.list_workflows(query)}
        if len(found) == 5 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert found == {c.order_id for c in children}
    # What GET /orders/{id} serves first (the order cache) and what the recorder stores (the events'
    # snapshots) hold the parent with its children.
    cached = OrderSnapshot.model_validate_json(await redis.get(f"order:{signal.workflow_id}"))
    assert cached.state == S.FILLED and [c.order_id for c in cached.children] == [c.order_id for c in children]
    events = [e for e in await order_events(redis) if e["order_id"] == signal.workflow_id]
    assert events[-1]["state"] == "filled" and len(events[-1]["snapshot"]["children"]) == 5


async def test_cancelled_parent_leaves_no_open_child_and_places_none(temporal_env, order_worker, fast_settings, redis):
    quote = await SimulatedVenue(redis, fast_settings.execution.simulation).quote("ETH/USDT")
    # An iceberg resting below the market: its visible child stays open until the parent is cancelled.
    price = (quote.bid * D("0.95")).quantize(D("0.01"))
    iceberg = make_signal(quantity="0.3", order_type="limit", limit_price=str(price),
                          execution={"algo": "iceberg", "display_quantity": "0.1"})
    resting = await start_parent(temporal_env.client, fast_settings, iceberg)
    # A TWAP whose second slice is 20 s away: cancelled after its first child ended.
    slow = twap("0.2", 2, 40)
    paced = await start_parent(temporal_env.client, fast_settings, slow)
    # The same iceberg cancelled from the Temporal UI or CLI (a workflow cancellation request).
    from_ui = make_signal(quantity="0.3", order_type="limit", limit_price=str(price),
                          execution={"algo": "iceberg", "display_quantity": "0.1"})
    cancelled_in_temporal = await start_parent(temporal_env.client, fast_settings, from_ui)
    await wait_until(resting, lambda s: s.children and s.children[0].state == S.ACCEPTED)
    await wait_until(cancelled_in_temporal, lambda s: s.children and s.children[0].state == S.ACCEPTED)
    await cancelled_in_temporal.cancel()
    ended = await asyncio.wait_for(cancelled_in_temporal.result(), 30)
    assert ended.state == S.CANCELLED and ended.reason == "workflow cancellation requested", ended.reason
    assert [c.state for c in await children_of(temporal_env.client, ended)] == [S.CANCELLED]
    await wait_until(paced, lambda s: s.children and s.children[0].state == S.FILLED)
    after = await resting.execute_update("cancel_order", {"reason": "enough"}, result_type=OrderSnapshot)
    assert after.state == S.CANCELLED and after.reason == "enough"
    await paced.signal("cancel", {"reason": "stop the twap"})
    stopped = await asyncio.wait_for(paced.result(), 30)
    assert stopped.state == S.CANCELLED and stopped.filled_quantity == D("0.1")
    for parent in (after, stopped):
        assert len(parent.children) == 1
        for child in await children_of(temporal_env.client, parent):
            assert child.is_terminal
    child = (await children_of(temporal_env.client, after))[0]
    assert child.state == S.CANCELLED and child.reason.startswith("parent: enough")
    assert not await exists(temporal_env.client, f"{iceberg.workflow_id}-c2")
    assert not await exists(temporal_env.client, f"{slow.workflow_id}-c2")
    open_at_venue = await redis.zrange("sim:simulation:open:default", 0, -1) if await redis.exists(
        "sim:simulation:open:default") else []
    assert not [k for k in open_at_venue if k.startswith(iceberg.workflow_id)]


async def test_iceberg_refills_when_the_visible_child_fills(temporal_env, order_worker, fast_settings, redis):
    quote = await SimulatedVenue(redis, fast_settings.execution.simulation).quote("ETH/USDT")
    price = (quote.ask * D("1.03")).quantize(D("0.01"))  # marketable: each visible child fills at once
    signal = make_signal(quantity="0.25", order_type="limit", limit_price=str(price),
                         execution={"algo": "iceberg", "display_quantity": "0.1"})
    final = await asyncio.wait_for((await start_parent(temporal_env.client, fast_settings, signal)).result(), 60)
    assert final.state == S.FILLED, final.reason
    assert [c.quantity for c in final.children] == [D("0.1"), D("0.1"), D("0.05")]
    children = await children_of(temporal_env.client, final)
    for before, after in zip(children, children[1:]):  # refilled after the visible one filled
        assert after.created_at >= before.transitions[-1].at
    assert all(c.limit_price == price for c in children)


async def test_a_refused_childs_quantity_is_worked_again(temporal_env, order_worker, fast_settings, redis):
    await redis.hset(FAULTS_KEY, "reject_next", 1)  # the venue refuses the first child
    final = await asyncio.wait_for((await start_parent(temporal_env.client, fast_settings,
                                                       twap("0.2", 2, 2))).result(), 60)
    assert final.state == S.FILLED, final.reason
    # The refused 0.1 came back: carried into the second slice (0.2) if its refusal was known when that
    # slice's child started, else worked by one more child after the schedule (0.1 + 0.1).
    assert final.children[0].state == S.REJECTED and final.children[0].quantity == D("0.1")
    rest = final.children[1:]
    assert [c.quantity for c in rest] in ([D("0.2")], [D("0.1"), D("0.1")])
    assert all(c.state == S.FILLED for c in rest) and final.filled_quantity == D("0.2")


async def test_a_twap_price_cap_is_never_breached_and_what_it_left_is_carried(temporal_env, order_worker,
                                                                               fast_settings, redis):
    """A buy TWAP capped 1 % below the market: every child is an IOC limit at the cap, so nothing
    fills (a market slice would have), and what each slice left is carried into the next child."""
    quote = await SimulatedVenue(redis, fast_settings.execution.simulation).quote("ETH/USDT")
    cap = (quote.bid * D("0.99")).quantize(D("0.01"))
    signal = twap("0.2", 2, 2, limit_price=str(cap))
    final = await asyncio.wait_for((await start_parent(temporal_env.client, fast_settings, signal)).result(), 90)
    assert final.state == S.EXPIRED and final.filled_quantity == 0, (final.state, final.reason)
    children = await children_of(temporal_env.client, final)
    # The two slices, then the quantity given back worked again by the extra children.
    assert len(children) == 2 + 3 and all(c.state == S.EXPIRED and c.filled_quantity == 0 for c in children)
    assert all((c.order_type, c.time_in_force, c.limit_price) == ("limit", "IOC", cap) for c in children)
    assert children[-1].quantity == D("0.2")  # every unfilled slice carried into what came after
    assert not [f for f in await executions(redis) if f["order_id"].startswith(signal.workflow_id)]


async def test_amend_changes_what_is_left_to_work(temporal_env, order_worker, fast_settings, redis):
    handle = await start_parent(temporal_env.client, fast_settings, twap("0.4", 4, 8))
    await wait_until(handle, lambda s: s.children and s.children[0].state == S.FILLED)
    amended = await handle.execute_update("amend_order", {"quantity": "0.7"}, result_type=OrderSnapshot)
    assert amended.quantity == D("0.7") and "quantity 0.4 -> 0.7" in amended.reason
    from temporalio.client import WorkflowUpdateFailedError
    try:
        await handle.execute_update("amend_order", {"quantity": "0.05"}, result_type=OrderSnapshot)
        raise AssertionError("an amend below the filled quantity was taken")
    except WorkflowUpdateFailedError as error:
        assert "not above the filled quantity" in str(error.cause)
    final = await asyncio.wait_for(handle.result(), 60)
    assert final.state == S.FILLED and final.filled_quantity == D("0.7")
    assert sum(c.quantity for c in final.children) == D("0.7") and len(final.children) == 4


async def test_invalid_algorithm_parameters_are_refused_with_a_reason(temporal_env, order_worker, fast_settings):
    cases = {
        "invalid_algo_parameters": make_signal(quantity="0.1", execution={"algo": "twap", "duration_s": 30}),
        "algo_not_supported": make_signal(quantity="0.1", execution={"algo": "twap", "slices": 2, "duration_s": 4,
                                                                      "display_quantity": "0.05"}),
    }
    for reason, signal in cases.items():
        final = await asyncio.wait_for((await start_parent(temporal_env.client, fast_settings, signal)).result(), 30)
        assert final.state == S.DENIED and final.reason.startswith(reason), final.reason
        assert final.children == []
    # More slices than the venue's minimum allows: fewer, larger ones, said on the order.
    merged = await asyncio.wait_for((await start_parent(temporal_env.client, fast_settings,
                                                        twap("0.012", 5, 4))).result(), 60)
    assert merged.state == S.FILLED, merged.reason
    # min_order_size 10 USDT (config/local.yaml) at ~3000 (the simulated path moves): ~0.0035 ETH a child
    sent = len(merged.children)
    assert 1 < sent < 5 and sum(c.quantity for c in merged.children) == D("0.012")
    assert f"5 slices asked, {sent} sent" in merged.transitions[1].reason


async def test_a_long_twap_continues_as_new_with_its_children(temporal_env, order_worker, fast_settings, redis):
    """The dev server suggests continue-as-new at 200 events (tests/conftest.py): a 20-slice TWAP
    (one a second, ~12 events each) crosses it; the new run knows its children and finishes the schedule."""
    signal = twap("1.0", 20, 20)
    handle = await start_parent(temporal_env.client, fast_settings, signal)
    first_run = (await handle.describe()).run_id
    final = await asyncio.wait_for(handle.result(), 120)
    assert final.state == S.FILLED and final.filled_quantity == D("1.0"), final.reason
    assert [c.order_id for c in final.children] == [f"{signal.workflow_id}-c{n}" for n in range(1, 21)]
    assert (await handle.describe()).run_id != first_run
    fills = await executions(redis)
    assert sum(D(f["quantity"]) for f in fills) == D("1.0") and len({f["fill_id"] for f in fills}) == len(fills)
    assert timedelta(0) < final.updated_at - final.created_at


async def test_a_split_route_places_one_child_per_leg(temporal_env, order_worker, fast_settings, task_queue):
    """The router's plan (h13route) arrives as ParentOrderInput.route: one child per leg, on its venue."""
    signal = make_signal(quantity="0.3")
    legs = [RouteLeg(exchange="simulation", quantity=D(q), expected_average_price=D("3000"),
                     expected_all_in_price=D("3001")) for q in ("0.1", "0.2")]
    plan = RoutePlan(symbol="ETH/USDT", side="buy", quantity=D("0.3"), legs=legs, reason="split: test plan")
    handle = await temporal_env.client.start_workflow(
        "ParentOrderWorkflow", ParentOrderInput(signal=signal, route=plan), id=signal.workflow_id,
        task_queue=task_queue, result_type=OrderSnapshot)
    final = await asyncio.wait_for(handle.result(), 60)
    assert final.state == S.FILLED and final.algo == "route", final.reason
    assert [(c.quantity, c.exchange, c.state) for c in final.children] == [
        (D("0.1"), "simulation", S.FILLED), (D("0.2"), "simulation", S.FILLED)]
    assert final.transitions[1].reason == "split: test plan"
