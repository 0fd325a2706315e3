"""`tom worker`: runs OrderWorkflow and its activities on the configured task queue.

`running_worker` is the worker with its fill pollers, as `tom worker` and the tests run it
(`build_worker` alone is the bare Temporal worker); `run` adds signal handling for the CLI and for
Kubernetes (SIGTERM drains: in-flight activities get `graceful_shutdown_timeout` to finish).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

import redis.asyncio as aioredis
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.execution import ExecutionActivities
from activities.placement import PlacementActivities
from activities.routing import RoutingActivities, RoutingService
from activities.limits import AccountLimitActivities, DailyOrderLimit
from activities.publish import PublishActivities
from activities.venues.simulated import SimulatedVenue
from activities.venues import VenueRegistry
from config.settings import Settings, resolve_config_path
from messaging import EventSink, event_sink
from workers.direct_queries import evict_after_direct_queries
from workers.consumer import SignalConsumer
from workers.observability import worker_metrics_bind
from workers.poller import run_pollers
from workers.sweep import run_sweeps
from workers.runtime import available_cores, configure_logging, connect_temporal, redis_client
from workers.temporal_setup import require_search_attributes
from workflows.order import OrderWorkflow
from workflows.parent import ParentOrderWorkflow

log = logging.getLogger("tom.worker")
GRACEFUL_SHUTDOWN = timedelta(seconds=20)  # k8s terminationGracePeriodSeconds must exceed this
# Workflow tasks one worker process runs at once. Beyond what its core can turn around in a few
# seconds, more slots only queue work inside the process: at 500, a burst above capacity made each
# task wait past the 10 s workflow-task timeout, the retries added load, and throughput collapsed
# (bench.throughput at 150/s offered). With fewer, the excess waits on the server's task queue,
# where it is durable and any worker can take it. Eager starts past the limit go through that queue.
WORKFLOW_TASK_SLOTS = 100
ACTIVITY_SLOTS = 500  # activities and local activities: waiting on venues and Redis, not on the CPU
DRAIN_MARGIN_S = 2.0  # past GRACEFUL_SHUTDOWN, for the pollers and the worker's own shutdown
# Libraries no workflow uses, whose code still runs on the worker's thread while an activation (or
# the worker's start-up check of its workflows) holds the sandbox: the finalizer of a Redis
# connection pool that the garbage collector frees then imports redis and opentelemetry modules
# (seen in CI: 18 such imports in one run). Passed through, such an import is the process's own
# module, not a fresh copy run under the workflow restrictions.
SANDBOX_PASSTHROUGH = ("redis", "opentelemetry")


async def build_registry(settings: Settings, redis: aioredis.Redis) -> VenueRegistry:
    registry = VenueRegistry(redis=redis)
    registry.register(SimulatedVenue(redis, settings.execution.simulation))
    for name in settings.execution.simulation.venues:
        registry.register(SimulatedVenue(redis, settings.execution.simulation.venue(name), name))
    if settings.execution.mode == "direct" or settings.execution.direct.accounts_in_use():
        from activities.venues.ccxt_exchange import build_ccxt_adapters  # ccxt is heavy: only where used

        for adapter in build_ccxt_adapters(settings, redis):
            registry.register(adapter)
    if settings.execution.mode == "quantconnect":
        from activities.venues.quantconnect import build_quantconnect_adapter

        registry.register(build_quantconnect_adapter(settings, redis))  # sent commands shared in Redis
    return registry


async def build_worker(client: Client, settings: Settings, redis: aioredis.Redis,
                       registry: VenueRegistry | None = None, max_concurrent: int | None = None,
                       sink: EventSink | None = None, **options) -> Worker:
    """The production worker; `options` are further `Worker` arguments a test sets (a worker without
    a workflow cache: `max_cached_workflows=0`)."""
    registry = registry or await build_registry(settings, redis)
    routing = RoutingService(registry, settings, redis)  # one book cache per worker process
    execution = ExecutionActivities(registry, settings, DailyOrderLimit(redis), routing)
    limits = AccountLimitActivities(redis)
    publish = PublishActivities(redis, settings, sink)
    concurrency = max_concurrent or ACTIVITY_SLOTS
    versioning = deployment_config(settings)
    return evict_after_direct_queries(Worker(
        client,
        task_queue=settings.temporal.task_queue,
        workflows=[OrderWorkflow, ParentOrderWorkflow],
        activities=[*execution.all(), PlacementActivities(execution).prepare_and_place, *RoutingActivities(routing).all(), limits.reserve_daily_order,
                    publish.record_progress],
        max_concurrent_workflow_tasks=max_concurrent or WORKFLOW_TASK_SLOTS,
        max_concurrent_activities=concurrency,
        max_concurrent_local_activities=concurrency,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        workflow_task_executor=activation_executor(settings.temporal.workflow_threads),
        **({"deployment_config": versioning} if versioning else {}),
        # The sandbox re-imports the workflow module for every new order (~60% of worker CPU at
        # load); `temporal.sandbox: false` trades that guard for throughput. Determinism is still
        # checked in CI by replaying recorded histories in the sandbox (tests/test_replay.py).
        workflow_runner=workflow_runner(settings.temporal.sandbox),
        **options,
    ))


def workflow_runner(sandbox: bool) -> SandboxedWorkflowRunner | UnsandboxedWorkflowRunner:
    """`temporal.sandbox`: the SDK's sandbox with SANDBOX_PASSTHROUGH passed through, or none."""
    if not sandbox:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*SANDBOX_PASSTHROUGH))


class InlineExecutor(concurrent.futures.Executor):
    """Runs each workflow activation on the worker's event loop thread, as the loop's next callback
    (outside the task that asked: a workflow steps its own tasks). Activations are short,
    deterministic Python: a thread per activation only adds a hand-off and GIL contention. A
    workflow runs its own event loop while activated and clears the running-loop registration on
    exit; the worker's loop is restored after it (as the SDK's inline debug mode does)."""

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as error:  # noqa: B036 - handed to the caller, as a thread pool would
                future.set_exception(error)
            finally:
                asyncio._set_running_loop(loop)

        loop.call_soon(run)
        return future


def activation_executor(threads: int) -> concurrent.futures.Executor:
    """`temporal.workflow_threads`: 0 runs activations inline, N on a pool of N threads."""
    if threads == 0:
        return InlineExecutor()
    return concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="temporal_workflow_")


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker versioning when `temporal.deployment_name` is set: this worker serves only version
    <deployment_name>.<build_id>, and tasks reach it once an operator makes that version current or
    ramping (README: worker versioning).

    Every workflow here is AUTO_UPGRADE: a running order moves to the new version on its next task.
    GTC orders live for weeks and continue as new, so PINNED would keep every old version's workers
    alive that long; moving is safe because every command-changing edit is behind
    `workflow.patched` and CI replays the recorded histories (tests/test_replay.py). Declared here,
    not in `@workflow.defn(versioning_behavior=...)`: on this server (1.32) a workflow declaring a
    behaviour on an unversioned worker lost local-activity markers and stalled (tests run
    unversioned workers), while the worker default applies only with versioning on."""
    t = settings.temporal
    if not t.deployment_name:
        return None
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=t.deployment_name, build_id=t.build_id or ""),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.AUTO_UPGRADE,
    )


@asynccontextmanager
async def running_worker(client: Client, settings: Settings, redis: aioredis.Redis,
                         registry: VenueRegistry | None = None, max_concurrent: int | None = None,
                         with_consumer: bool = False) -> AsyncIterator[Worker]:
    """The worker as production runs it: OrderWorkflow and its activities, the per-account fill
    pollers (every `execution.direct.poll_interval_ms`), the orphan sweeps and, if asked, the signal
    consumer. On exit
    the pollers stop, then in-flight tasks drain (up to GRACEFUL_SHUTDOWN). `serve` and the tests'
    worker fixture both run this."""
    async with AsyncExitStack() as stack:
        if registry is None:
            registry = await build_registry(settings, redis)
            stack.push_async_callback(registry.close)
        sink = event_sink(settings, redis)  # messaging.type: Redis streams or Pub/Sub topics
        stack.push_async_callback(sink.close)
        worker = await build_worker(client, settings, redis, registry, max_concurrent, sink)
        stop = asyncio.Event()
        accounts = [(name, getattr(registry.get(name), "account", "default")) for name in registry.names]
        interval_s = settings.execution.direct.poll_interval_ms / 1000
        execution = settings.execution
        tasks = [asyncio.create_task(run_pollers(client, redis, registry, accounts, stop, interval_s)),
                 asyncio.create_task(run_sweeps(client, redis, registry, accounts, stop, execution.orphans,
                                                execution.orphan_sweep_interval_s, sink))]
        if with_consumer:  # same client as the worker: workflow starts are eager, their first task runs here
            tasks.append(asyncio.create_task(SignalConsumer(client, redis, settings).run(stop)))
        async with worker:
            try:
                yield worker
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                log.info("stopping: draining in-flight tasks (up to %s)", GRACEFUL_SHUTDOWN)


async def check_namespace(settings: Settings) -> None:
    await require_search_attributes(await connect_temporal(settings), settings.temporal.namespace)


async def serve(settings: Settings, max_concurrent: int | None = None, with_consumer: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        client = await connect_temporal(settings)
        # A namespace without the search attributes fails every order's first upsert: refuse now.
        await require_search_attributes(client, settings.temporal.namespace)
        redis = redis_client(settings)
        stack.push_async_callback(redis.aclose)
        registry = await build_registry(settings, redis)
        stack.push_async_callback(registry.close)
        running = AsyncExitStack()
        await running.enter_async_context(running_worker(client, settings, redis, registry, max_concurrent,
                                                         with_consumer))
        version = settings.temporal.deployment_name and f"{settings.temporal.deployment_name}.{settings.temporal.build_id}"
        log.info("worker on task queue %r (namespace %s, venues %s, version %s)", settings.temporal.task_queue,
                 settings.temporal.namespace, ", ".join(registry.names), version or "unversioned")
        await stop.wait()
        # The SDK does not cancel a local activity (our venue calls) at the end of the graceful
        # shutdown: one that hangs up to execution_timeout_ms would hold the stop past the grace
        # period. Bound the drain; an abandoned call's order is picked up by another worker
        # (its workflow task times out) and reconciled by client order id.
        try:
            await asyncio.wait_for(running.aclose(), GRACEFUL_SHUTDOWN.total_seconds() + DRAIN_MARGIN_S)
        except asyncio.TimeoutError:
            log.error("drain not finished after %s: abandoning in-flight tasks", GRACEFUL_SHUTDOWN)
    log.info("worker stopped")


def run(settings: Settings, args) -> int:
    max_concurrent, with_consumer = getattr(args, "max_concurrent", None), getattr(args, "with_consumer", False)
    processes = getattr(args, "processes", None) or available_cores()
    bind = settings.temporal.metrics_bind
    # The supervisor runs no worker, so no metrics server: each child serves its own, on the
    # configured port + its slot - 1 (refused here, before any child starts, if N ports do not fit).
    worker_metrics_bind(bind, processes)
    slot = int(os.environ.get("TOM_WORKER_SLOT", "1"))
    configure_logging(settings, None if processes > 1 else worker_metrics_bind(bind, slot))
    if processes > 1:  # one process per core under a supervisor (workers/supervisor.py)
        from workers.supervisor import Supervisor, child_command

        # Refuse here, in one line: a child refusing would only be restarted by the supervisor.
        asyncio.run(check_namespace(settings))

        command = child_command(resolve_config_path(getattr(args, "config", None)), max_concurrent, with_consumer)
        return Supervisor(command, processes).run()
    asyncio.run(serve(settings, max_concurrent, with_consumer))
    return 0
