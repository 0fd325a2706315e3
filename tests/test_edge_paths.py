"""Paths no other test reached: the poller's lease failover and its fetch-trades branch, `failed`
after retry exhaustion and after `max_wait_s` on a busy venue, a venue that no longer knows the
order it is asked to cancel, and config keys whose effect was never checked (order_cache.enabled,
default_order_type, temporal.sandbox, simulation faults, Temporal TLS and API key)."""
import asyncio
import time
import uuid
from concurrent import futures
from datetime import timedelta
from decimal import Decimal

import grpc
import pytest
from temporalio.worker import UnsandboxedWorkflowRunner

from activities.venues.simulated import SimulatedVenue
from activities.venues import VenueRegistry
from oms.models import OrderSnapshot, OrderState
from oms.venue import VenueOrderReport, VenueOrderStatus
from tests.conftest import direct_settings, free_port, run_tom
from tests.helpers import local_activity_calls, make_signal, run_order, start_order
from tests.test_quantconnect import PROJECT as QC_PROJECT, TOKEN as QC_TOKEN, USER as QC_USER
from tests.test_quantconnect import fake  # noqa: F401  (fixture: QuantConnect's API, faked on its wire)
from tests.test_workflow_lifecycle import states, wait_for_state
from workers.poller import LEASE_S, AccountPoller
from workers.runtime import connect_temporal
from workers.worker import build_worker, running_worker

S = OrderState


def with_section(settings, section: str, **values):
    return settings.with_overrides(**{section: {**getattr(settings, section).model_dump(mode="json"), **values}})


async def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.05)


async def resting_orders(client, task_queue, count: int):
    handles = [await start_order(client, task_queue, make_signal(order_type="limit", limit_price="1000.00"))
               for _ in range(count)]
    return handles, [await wait_for_state(h, {S.ACCEPTED}) for h in handles]


# --- the poller ---------------------------------------------------------------------------------------
async def test_poller_lease_one_replica_polls_and_the_other_takes_over_when_it_dies(
        temporal_env, fast_settings, task_queue, redis):
    """Two replicas' pollers on one account: only the lease holder polls; when it stops renewing
    (its process died) the standby takes the lease once it expires and carries on signalling."""
    # A bare worker: the production one runs its own poller, which would hold this very lease.
    async with await build_worker(temporal_env.client, fast_settings, redis):
        venue = SimulatedVenue(redis, fast_settings.execution.simulation)
        registry = VenueRegistry({"simulation": venue})
        replicas = [AccountPoller(temporal_env.client, redis, registry, "simulation", interval_s=0.1) for _ in range(2)]
        stops = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(p.run(stop)) for p, stop in zip(replicas, stops)]
        try:
            await wait_until(lambda: _true(any(p.rounds >= 5 for p in replicas)), "poller rounds")
            holder = next(i for i, p in enumerate(replicas) if p.rounds >= 5)
            standby = 1 - holder
            assert replicas[standby].rounds == 0  # the lease keeps it idle
            stops[holder].set()  # the holder dies: its lease is no longer renewed
            await tasks[holder]
            died = time.monotonic()
            await wait_until(lambda: _true(replicas[standby].rounds > 0), "takeover", timeout=LEASE_S + 10)
            took = time.monotonic() - died
            assert took <= LEASE_S + 1, took  # at most one lease period
            assert await redis.get("poller:lease:simulation:default") == replicas[standby]._lease.owner

            # The new holder signals changes: an order cancelled at the venue reaches its workflow.
            signalled_before = replicas[standby].signals_sent
            handles, snaps = await resting_orders(temporal_env.client, task_queue, 1)
            # Its next round lists the new order (and signals it, as every change); then the cancel.
            await wait_until(lambda: _true(replicas[standby].signals_sent > signalled_before), "first listing")
            from oms.venue import VenueOrderRef

            await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=snaps[0].client_order_id,
                                             symbol="ETH/USDT"))
            final = await asyncio.wait_for(handles[0].result(), 30)
        finally:
            for stop in stops:
                stop.set()
            await asyncio.gather(*tasks)
    assert final.state == S.CANCELLED and final.reason == "cancelled at the venue"
    assert replicas[standby].signals_sent >= signalled_before + 2 and replicas[holder].signals_sent == 0


async def _true(value: bool) -> bool:
    return value


async def test_a_poller_report_without_its_trades_makes_the_workflow_fetch_the_order(
        temporal_env, order_worker, fast_settings, task_queue, redis):
    """A batched listing may omit trades (`fills_complete: false`). When such a report says the
    order changed, the workflow fetches the whole order and applies what the venue says, never the
    listing's partial picture."""
    handles, snaps = await resting_orders(temporal_env.client, task_queue, 2)
    # 1. A listing claims fills it does not carry; the venue (fetched) knows of none.
    claimed = VenueOrderReport(exchange="simulation", client_order_id=snaps[0].client_order_id, symbol="ETH/USDT",
                               status=VenueOrderStatus.PARTIALLY_FILLED, filled_quantity=Decimal("0.05"),
                               fills_complete=False)
    fetches_before = sum(1 for c in await local_activity_calls(handles[0]) if c[0] == "venue_fetch")
    await handles[0].signal("venue_update", claimed)

    async def fetched() -> bool:
        calls = await local_activity_calls(handles[0])
        return sum(1 for c in calls if c[0] == "venue_fetch") > fetches_before

    await wait_until(fetched, "fetch after an incomplete report")
    snap = await handles[0].query("status", result_type=OrderSnapshot)
    assert snap.state == S.ACCEPTED and snap.filled_quantity == 0, states(snap)
    # 2. A listing says the order left the open set, without trades: fetched, and its real end applied.
    from oms.venue import VenueOrderRef

    venue = SimulatedVenue(redis, fast_settings.execution.simulation)
    await venue.cancel(VenueOrderRef(exchange="simulation", client_order_id=snaps[1].client_order_id,
                                     symbol="ETH/USDT"))
    gone = VenueOrderReport(exchange="simulation", client_order_id=snaps[1].client_order_id, symbol="ETH/USDT",
                            status=VenueOrderStatus.FILLED, filled_quantity=Decimal("0.1"), fills_complete=False)
    await handles[1].signal("venue_update", gone)
    final = await asyncio.wait_for(handles[1].result(), 30)
    assert final.state == S.CANCELLED and final.filled_quantity == 0, states(final)  # the venue's truth
    assert "venue_fetch" in [c[0] for c in await local_activity_calls(handles[1])]
    await handles[0].signal("cancel", {})
    assert (await handles[0].result()).state == S.CANCELLED


# --- failed -------------------------------------------------------------------------------------------
async def test_failed_after_retries_are_exhausted(temporal_env, stack_settings, emulators, redis, task_queue):
    """Every create reaches Binance after its receive window (a `slow` fault): refused with -1021,
    nothing placed (TRANSIENT). After retry_attempts retries the order is `failed`, never `unknown`."""
    emulator = emulators["binance"]
    settings = direct_settings(stack_settings, emulators, ("binance",),
                               direct={"circuit_breaker": {"failure_threshold": 100, "open_seconds": 30}},
                               orders={"retry_attempts": 2, "retry_delay_ms": 20, "execution_timeout_ms": 8000},
                               recv_window_ms=1000, timeout_ms=6000)
    async with running_worker(temporal_env.client, settings, redis):
        emulator.fault(kind="slow", endpoints=["create"], rate=1.0, delay_ms=2500)
        snap = await asyncio.wait_for(run_order(temporal_env.client, task_queue, make_signal(quantity="0.01")), 90)
        calls = await local_activity_calls(temporal_env.client.get_workflow_handle(snap.order_id))
    emulator.clear_faults()
    assert snap.state == S.FAILED and snap.reason.startswith("venue unavailable after retries"), states(snap)
    assert states(snap) == ["created", "validated", "submitted", "failed"]
    assert [c for c in calls if c[0] == "venue_submit"] == [("venue_submit", "VenueTransient")] * 3
    assert emulator.orders() == [] and emulator.stats()["by_class"]["create"] == 3


async def test_failed_after_max_wait_on_a_busy_venue(temporal_env, stack_settings, emulators, redis, task_queue):
    """Binance answers every create with 429 (retry after 1 s): the order waits durably, without
    spending retries, until more waiting would pass execution.direct.max_wait_s; then `failed`."""
    emulator = emulators["binance"]
    settings = direct_settings(stack_settings, emulators, ("binance",),
                               direct={"max_wait_s": 3.0, "circuit_breaker": {"failure_threshold": 100}},
                               orders={"retry_attempts": 1, "retry_delay_ms": 20})
    async with running_worker(temporal_env.client, settings, redis):
        emulator.fault(kind="rate_limit", endpoints=["create"], rate=1.0, retry_after_s=1)
        started = time.monotonic()
        snap = await asyncio.wait_for(run_order(temporal_env.client, task_queue, make_signal(quantity="0.01")), 90)
        took = time.monotonic() - started
        handle = temporal_env.client.get_workflow_handle(snap.order_id)
        calls = await local_activity_calls(handle)
        timers = [e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
                  async for e in handle.fetch_history_events() if e.HasField("timer_started_event_attributes")]
    emulator.clear_faults()
    assert snap.state == S.FAILED and "venue unavailable after retries" in snap.reason, states(snap)
    busy = [t for t in timers if t >= 1.0]  # the waits the venue asked for (retries wait 20 ms)
    assert busy and sum(busy) <= 3.0 and took >= sum(busy), (timers, took)
    assert {c[1] for c in calls if c[0] == "venue_submit"} == {"VenueRateLimited"}
    assert emulator.orders() == []


# --- venue answers ------------------------------------------------------------------------------------
async def test_a_5xx_on_submit_is_reconciled_and_resubmitted_once_the_venue_says_not_found(
        temporal_env, stack_settings, emulators, redis, task_queue):
    """Binance answers the create with a 503 before acting: the outcome is unknown to us, so the
    order reconciles; the venue reports no such order (not_found) and, once the first request's
    receive window has passed, the order goes out again under the same client id: one order."""
    emulator = emulators["binance"]
    settings = direct_settings(stack_settings, emulators, ("binance",), recv_window_ms=1000,
                               direct={"circuit_breaker": {"failure_threshold": 100}})
    async with running_worker(temporal_env.client, settings, redis):
        emulator.fault(kind="server_error", endpoints=["create"], count=1, status=503)
        snap = await asyncio.wait_for(run_order(temporal_env.client, task_queue, make_signal(quantity="0.01")), 90)
    assert snap.state == S.FILLED and states(snap)[:4] == ["created", "validated", "submitted", "unknown"], states(snap)
    assert [o["client_order_id"] for o in emulator.orders()] == [snap.client_order_id]
    assert emulator.stats()["by_class"]["create"] == 2 and emulator.stats()["duplicate_client_order_ids"] == []


async def test_cancel_of_an_order_the_venue_no_longer_knows_ends_it(temporal_env, order_worker, task_queue, redis):
    handles, snaps = await resting_orders(temporal_env.client, task_queue, 1)
    await redis.delete(f"sim:simulation:order:{snaps[0].client_order_id}")  # the venue lost it
    final = await handles[0].execute_update("cancel_order", {"reason": "flat"}, result_type=OrderSnapshot)
    assert final.state == S.CANCELLED and final.reason == "flat" and final.filled_quantity == 0
    assert ("venue_cancel", "VenueOrderNotFound") in await local_activity_calls(handles[0])


# --- config keys --------------------------------------------------------------------------------------
async def test_order_cache_disabled_writes_no_cache_and_status_still_answers(
        temporal_env, fast_settings, task_queue, redis, tmp_path, stack_settings):
    settings = with_section(stack_settings, "order_cache", enabled=False)
    config = tmp_path / "nocache.yaml"
    config.write_text(settings.to_yaml())
    async with running_worker(temporal_env.client, settings, redis):
        snap = await run_order(temporal_env.client, task_queue, make_signal())
        assert snap.state == S.FILLED
        assert [k async for k in redis.scan_iter("order:*")] == []  # nothing cached
        shown = await asyncio.to_thread(run_tom, config, "status", snap.order_id, "--json")  # by query instead
    assert shown.returncode == 0, shown.stderr
    assert OrderSnapshot.model_validate_json(shown.stdout).state == S.FILLED
    assert await redis.xlen("order_events") == len(snap.transitions)  # events still published


async def test_default_order_type_applies_to_a_signal_that_names_none(temporal_env, fast_settings, task_queue, redis):
    limit_default = with_section(fast_settings, "orders", default_order_type="limit")
    async with running_worker(temporal_env.client, limit_default, redis):
        unpriced = await run_order(temporal_env.client, task_queue, make_signal())  # started directly, not via intake
    # A limit by default, and a limit needs a price: denied with the reason (never sent as market).
    assert unpriced.order_type.value == "limit", unpriced
    assert unpriced.state == S.DENIED and unpriced.reason.startswith("missing_limit_price"), unpriced.reason
    async with running_worker(temporal_env.client, fast_settings, redis):  # the shipped default: market
        market = await run_order(temporal_env.client, task_queue, make_signal())
    assert market.order_type.value == "market" and market.state == S.FILLED


async def test_sandbox_false_runs_workflows_unsandboxed(temporal_env, fast_settings, task_queue, redis):
    unsandboxed = with_section(fast_settings, "temporal", sandbox=False)
    async with running_worker(temporal_env.client, unsandboxed, redis) as worker:
        assert isinstance(worker.config()["workflow_runner"], UnsandboxedWorkflowRunner)
        snap = await run_order(temporal_env.client, task_queue, make_signal())
    assert snap.state == S.FILLED
    async with running_worker(temporal_env.client, fast_settings, redis) as worker:
        assert not isinstance(worker.config()["workflow_runner"], UnsandboxedWorkflowRunner)


@pytest.mark.filterwarnings("ignore:Module yaml:UserWarning")  # the control below: imported in the sandbox
async def test_the_sandbox_passes_redis_and_opentelemetry_through(temporal_env, task_queue):
    """What a finalizer imports during an activation (a Redis connection pool's does) is the
    process's own module, not a fresh copy run under the workflow restrictions."""
    import opentelemetry.context
    import redis.observability.recorder
    from temporalio.worker import Worker

    from tests.sandbox_probe import ImportProbeWorkflow
    from workers.worker import workflow_runner

    async with Worker(temporal_env.client, task_queue=task_queue, workflows=[ImportProbeWorkflow],
                      workflow_runner=workflow_runner(sandbox=True)):
        for module in (redis.observability.recorder, opentelemetry.context):
            got = await temporal_env.client.execute_workflow(
                ImportProbeWorkflow.run, module.__name__, id=f"probe-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue, execution_timeout=timedelta(seconds=30))
            assert got == str(id(module)), (module.__name__, got)
        # The check can fail: a library not passed through is imported again in the sandbox.
        got = await temporal_env.client.execute_workflow(
            ImportProbeWorkflow.run, "yaml.composer", id=f"probe-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue, execution_timeout=timedelta(seconds=30))
        import yaml.composer
        assert got != str(id(yaml.composer)), got


async def test_simulation_fault_rates_from_config(temporal_env, fast_settings, task_queue, redis):
    def faulty(**rates):
        execution = fast_settings.execution.model_dump(mode="json")
        execution["simulation"]["faults"] = {**execution["simulation"]["faults"], **rates}
        return fast_settings.with_overrides(execution=execution)

    async with running_worker(temporal_env.client, faulty(reject_rate=1.0), redis):
        rejected = await run_order(temporal_env.client, task_queue, make_signal())
    async with running_worker(temporal_env.client, faulty(lost_ack_rate=1.0), redis):
        lost = await run_order(temporal_env.client, task_queue, make_signal())
    assert rejected.state == S.REJECTED and "simulated rejection" in rejected.reason
    assert states(lost) == ["created", "validated", "submitted", "unknown", "filled"]  # reconciled
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == [
        f"sim:simulation:order:{lost.client_order_id}"]


class FakeFrontend(grpc.GenericRpcHandler):
    """Temporal's frontend as far as a connecting client sees it: GetSystemInfo, with API-key auth."""

    def __init__(self, key: str) -> None:
        self.key, self.calls = key, []

    def service(self, details):
        def get_system_info(request: bytes, context) -> bytes:
            from temporalio.api.workflowservice.v1 import GetSystemInfoResponse

            metadata = dict(context.invocation_metadata())
            self.calls.append((details.method, metadata.get("authorization")))
            if metadata.get("authorization") != f"Bearer {self.key}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
            return GetSystemInfoResponse().SerializeToString()

        if details.method.endswith("/GetSystemInfo"):
            return grpc.unary_unary_rpc_method_handler(get_system_info)
        return None


async def test_temporal_api_key_and_tls_reach_the_client(fast_settings, stack_settings, tmp_path):
    frontend = FakeFrontend("right-key")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[frontend])
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    # An API key is sent only over TLS (config refuses it in plaintext): a TLS front before the fake.
    from tests.tls_front import SERVER_NAME, CertificateAuthority, TLSFront

    ca = CertificateAuthority(tmp_path)
    try:
        async with TLSFront(("127.0.0.1", port), ca.issue("server", server=True)) as front:
            def pointed(address: str, **temporal):
                return with_section(fast_settings, "temporal", address=address, **temporal)

            tls = {"server_ca_path": str(ca.issued.cert), "server_name": SERVER_NAME}
            client = await connect_temporal(pointed(front.address, api_key="right-key", tls=tls))
            assert client.service_client.config.api_key == "right-key"
            with pytest.raises(RuntimeError, match="invalid API key"):  # a wrong key is refused
                await connect_temporal(pointed(front.address, api_key="wrong-key", tls=tls))
        with pytest.raises(RuntimeError, match="(?i)connect"):  # TLS to a plaintext frontend: refused
            await connect_temporal(pointed(f"127.0.0.1:{port}", api_key="right-key", tls=tls))
    finally:
        server.stop(0)
    assert frontend.calls[:2] == [("/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo", "Bearer right-key"),
                                  ("/temporal.api.workflowservice.v1.WorkflowService/GetSystemInfo", "Bearer wrong-key")]
    assert len(frontend.calls) == 2  # the TLS client never got as far as a call
    # The CLI, told to use TLS against the (plaintext) dev server, refuses in one line.
    tls_config = tmp_path / "tls.yaml"
    tls_config.write_text(with_section(stack_settings, "temporal", tls=True).to_yaml())
    result = await asyncio.to_thread(run_tom, tls_config, "status", "order-x")
    assert result.returncode == 1 and result.stderr.startswith("tom status: cannot reach Temporal"), result.stderr


async def test_an_order_quantconnect_marks_invalid_ends_rejected_with_its_reason(
        temporal_env, fast_settings, redis, task_queue, fake):
    """QuantConnect takes the command, then its live algorithm marks the order Invalid (an asset
    not in its security list): the venue reports `rejected` afterwards, found by the account poller."""
    execution = fast_settings.execution.model_dump(mode="json")
    settings = fast_settings.with_overrides(execution={
        **execution, "mode": "quantconnect",
        "quantconnect": {"api_key": QC_TOKEN, "project_id": str(QC_PROJECT), "user_id": QC_USER,
                         "base_url": fake.base_url}})
    async with running_worker(temporal_env.client, settings, redis):
        snap = await asyncio.wait_for(run_order(temporal_env.client, task_queue, make_signal(
            symbol="LTC/USDT", quantity="1", reference_price="80")), 60)
    assert snap.state == S.REJECTED and "was not found in your security list" in snap.reason, states(snap)
    assert snap.exchange == "quantconnect" and snap.filled_quantity == 0
    [placed] = fake.orders(QC_PROJECT)
    assert placed.tag.startswith(f"tom:{snap.client_order_id}")
