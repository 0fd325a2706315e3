"""bench.trivial's floor workflows measure what bench.throughput compares them with: `order_shaped`
has the durable shape of a market order that goes out at once (the same local activities, timer and
workflow tasks, with the order's patch marker and search-attribute upserts set aside), and a short
run of every kind completes and reports its figures."""
from temporalio.client import WorkflowHandle
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.trivial import KINDS, OrderShapedWorkflow, measure, touch
from tests.helpers import make_signal, run_order



async def durable_shape(handle: WorkflowHandle) -> list[str]:
    """Event types in order, without what only the order adds (its patch marker, its upserts)."""
    shape = []
    async for event in handle.fetch_history_events():
        kind = event.WhichOneof("attributes")
        if kind == "marker_recorded_event_attributes" and event.marker_recorded_event_attributes.marker_name == "core_patch":
            continue
        shape.append(kind)
    return [k for k in shape if k != "upsert_workflow_search_attributes_event_attributes"]


async def test_order_shaped_has_a_market_orders_durable_shape(temporal_env, order_worker, task_queue):
    client = temporal_env.client
    snapshot = await run_order(client, task_queue, make_signal(order_type="market"))
    assert snapshot.state == "filled", snapshot
    order_shape = await durable_shape(client.get_workflow_handle(snapshot.order_id))

    floor_queue = f"{task_queue}-floor"
    async with Worker(client, task_queue=floor_queue, workflows=[OrderShapedWorkflow], activities=[touch],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await client.start_workflow(OrderShapedWorkflow.run, "x", id=f"{floor_queue}-1", task_queue=floor_queue)
        await handle.result()
    floor_shape = await durable_shape(handle)

    assert floor_shape == order_shape
    assert floor_shape.count("marker_recorded_event_attributes") == 2  # two local activities
    assert floor_shape.count("timer_started_event_attributes") == 1  # the closing barrier
    assert floor_shape.count("workflow_task_completed_event_attributes") == 2


async def test_every_floor_kind_completes_and_reports(temporal_env):
    # 2.5 s: the server fires the closing barrier's 1 ms timer about a second later (its timers have
    # about a second's precision), so a run closes about a second after it starts.
    figures = await measure(temporal_env.client.service_client.config.target_host, temporal_env.client.namespace,
                            seconds=2.5, rate=20, sandbox=False)
    for kind in KINDS:
        assert figures[f"{kind}_unfinished_after_drain"] == 0, figures
        assert figures[f"{kind}_offered"] >= 45, figures
        assert figures[f"{kind}_workflows_per_s"] > 0, (kind, figures)
        assert figures[f"{kind}_worker_cpu_ms_per_workflow"] > 0, (kind, figures)
