"""Model-based test: OrderWorkflow on the time-skipping server, driven through random sequences of
venue answers and operator actions, with the invariants checked after every run.

Each example is generated from one seed (reproduce it with TOM_MODEL_SEED=<seed> TOM_MODEL_EXAMPLES=1):
an order (resting limit, market, GTD limit) on a scripted venue (tests/scripted_venue.py) with or
without native amend, whose every call may be answered, lose its answer, lose its request, be
delayed, be refused transiently or by the venue; interleaved with fills (partial, duplicated in
reports, racing a cancel), the venue ending the order itself, account-poller pushes (with or without
their trades), cancel by signal / update / Temporal workflow cancellation, amend by signal /
update, time passing (GTD expiry, backoffs), and worker restarts on the same task queue. Runs are
kept short and continue-as-new is forced low, so it fires under all of this.

After each run: the order rested (closed, or waiting on a timer: never a hot loop, never stuck in a
task); no workflow task failed in any run of the chain; once the venue calms down and the order is
cancelled, it ends terminal; filled quantity never exceeds the order; the fills the venue made are
counted exactly once (snapshot, published executions); at most one live venue order per order at
any time, none left live; venue requests per order within the bound.

CI runs TOM_MODEL_EXAMPLES (default 30) examples from TOM_MODEL_SEED (default fixed); more on demand.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

import workflows.order as order_module
from oms.models import OrderSnapshot, client_order_id_for
from oms.venue import VenueOrderStatus
from tests.helpers import make_signal
from tests.model_support import ScriptedWorkers, chain_histories, failed_workflow_tasks, settle, skip_time
from tests.scripted_venue import STEP, ScriptedVenue

EXAMPLES = int(os.environ.get("TOM_MODEL_EXAMPLES", "30"))
SEED = int(os.environ.get("TOM_MODEL_SEED", "20261127"))
ACTIONS = ("fill", "fill", "fill", "venue_end", "push", "cancel_signal", "cancel_update", "workflow_cancel",
           "amend_signal", "amend_update", "restart", "sleep", "sleep", "pause")
# Venue requests per order: a few per action (a call, its transient retries, a reconcile, a
# confirmation), plus the backoff-spaced retries while time passes (at most one per half cap).
MESSAGES = {"push", "cancel_signal", "cancel_update", "workflow_cancel", "amend_signal", "amend_update"}
REQUESTS_PER_ACTION = 12
REQUESTS_BASE = 24


def request_bound(actions: int, skipped_s: float) -> int:
    half_cap_s = order_module.RETRY_BACKOFF_MAX.total_seconds() / 2
    return REQUESTS_BASE + REQUESTS_PER_ACTION * actions + int(skipped_s / half_cap_s) * 2


async def skip_seconds(time_env, seconds: float) -> None:
    """Skip time in steps of at most 10 minutes, each RPC bounded (model_support.skip_time). The test
    server's skip call sometimes drops its connection (an http2 error) under load: a harness fault,
    retried; whatever the workflow did meanwhile is still checked by the invariants."""
    while seconds > 0:
        step = min(seconds, 600)
        for attempt in range(3):
            try:
                await skip_time(time_env, timedelta(seconds=step))
                break
            except RPCError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)
        seconds -= step
        await asyncio.sleep(0.02)


async def act(action, rng, venue, owner, latest, workers, updates, time_env, script) -> float:
    """Carry out one generated action; returns the seconds of time skipped."""
    if "workflow_cancel" in script[:-1] and action in MESSAGES:
        # The test server fails (an internal error, for good) when a signal or update lands while
        # a cancellation-requested workflow completes; a real server takes it. After a workflow
        # cancellation the model only moves the venue, time and workers.
        return 0.0
    if action == "fill":
        venue.random_fill(owner)
    elif action == "venue_end":
        for order in venue.live_orders(owner):
            venue.end(order, rng.choice([VenueOrderStatus.CANCELLED, VenueOrderStatus.EXPIRED]))
    elif action == "push":
        orders = [o for cid, o in venue.orders.items() if cid.startswith(owner)]
        if orders:
            await latest.signal("venue_update", venue.report(orders[-1], fills_complete=rng.random() < 0.5))
    elif action == "cancel_signal":
        await latest.signal("cancel", {"reason": "model"})
    elif action == "cancel_update":
        updates.append(asyncio.create_task(latest.execute_update(
            "cancel_order", {"reason": "model"}, result_type=OrderSnapshot)))
    elif action == "workflow_cancel":
        await latest.cancel()
    elif action in ("amend_signal", "amend_update"):
        change = ({"quantity": str(STEP * rng.randint(50, 200))} if rng.random() < 0.5
                  else {"limit_price": str(Decimal("99") + STEP * rng.randint(0, 150))})
        if action == "amend_signal":
            await latest.signal("amend", change)
        else:
            updates.append(asyncio.create_task(latest.execute_update("amend_order", change, result_type=OrderSnapshot)))
    elif action == "restart":
        await workers.restart()
    elif action == "sleep":
        seconds = rng.choice([1, 20, 90, 600, 3600])
        await skip_seconds(time_env, seconds)
        return float(seconds)
    return 0.0


async def run_example(seed: int, time_env, redis, settings) -> dict:
    rng = random.Random(seed)  # the actions; the venue answers from its own generator
    client = time_env.client
    venue = ScriptedVenue(random.Random(seed * 7919), native_amend=rng.random() < 0.5)
    kind = rng.choice(["limit", "limit", "market", "gtd"])
    now = await time_env.get_current_time()
    fields = {"symbol": "BTC/USDT", "quantity": "1.00", "signal_id": f"m{seed}-{uuid.uuid4().hex[:6]}"}
    if kind == "limit":
        fields.update(order_type="limit", limit_price="100.00")
    elif kind == "gtd":
        fields.update(order_type="limit", limit_price="100.00", time_in_force="GTD",
                      expire_at=(now + timedelta(seconds=rng.choice([30, 120, 900]))).isoformat())
    signal = make_signal(**fields)
    owner = client_order_id_for(signal.workflow_id)
    queue = f"model-{seed}-{uuid.uuid4().hex[:6]}"
    updates: list[asyncio.Task] = []
    skipped, script = 0.0, []
    # Retries 1 s apart: the test server fails a task that cancels a timer firing at that moment
    # (sdk-java issue 2606), which short timers racing a cancellation would hit now and then.
    # Every other example on today's rules (prices read, preparation placing the order at once);
    # the rest on a release-0.1 context, whose validation and amend rules still replay.
    current_rules = seed % 2 == 0
    async with ScriptedWorkers(client, queue, venue, settings, redis, current_rules=current_rules,
                               retry_delay_ms=1000) as workers:
        handle = await client.start_workflow("OrderWorkflow", signal, id=signal.workflow_id, task_queue=queue,
                                             result_type=OrderSnapshot, task_timeout=timedelta(seconds=2))
        latest = client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot)
        await asyncio.sleep(0.1)
        for _ in range(rng.randint(3, 9)):
            action = rng.choice(ACTIONS)
            script.append(action)
            print(f"  seed {seed}: {action}")
            try:
                skipped += await act(action, rng, venue, owner, latest, workers, updates, time_env, script)
            except RPCError as error:  # the order already ended: signals and cancellation are refused
                assert "completed" in str(error).lower() or "not found" in str(error).lower(), (action, error)
            await asyncio.sleep(rng.choice([0.0, 0.05, 0.2]))

        rested = await settle(client, signal.workflow_id, handle.first_execution_run_id)
        if not rested:
            runs = await chain_histories(client, signal.workflow_id, handle.first_execution_run_id)
            print(f"  seed {seed} not resting: {[EventType.Name(e.event_type) for e in runs[-1][-12:]]}")
        # The venue calms down, requests in the air land, and the order is cancelled: it must end.
        venue.calm = True
        venue.land_in_flight()
        snap = await latest.query("status", result_type=OrderSnapshot)
        if not snap.is_terminal and "workflow_cancel" not in script:
            await latest.signal("cancel", {"reason": "end of the model run"})
        final = await asyncio.wait_for(latest.result(), timeout=60)
        done, pending = await asyncio.wait(updates, timeout=30) if updates else (set(), set())
        runs = await chain_histories(client, signal.workflow_id, handle.first_execution_run_id)
    for task in done:
        error = task.exception()
        assert error is None or isinstance(error, (WorkflowUpdateFailedError, RPCError)), repr(error)
    return {"seed": seed, "kind": kind, "native_amend": venue.native_amend, "current_rules": current_rules, "script": script, "rested": rested,
            "final": final, "runs": runs, "venue": venue, "owner": owner, "pending_updates": pending,
            "skipped": skipped, "published": workers.published}


def check(result: dict) -> list[str]:
    final: OrderSnapshot = result["final"]
    venue: ScriptedVenue = result["venue"]
    owner = result["owner"]
    problems = []
    if not result["rested"]:
        problems.append("the order neither ended nor waited on a timer")
    if failed := failed_workflow_tasks(result["runs"]):
        problems.append(f"workflow task failed: {failed[:2]}")
    if not final.is_terminal:
        problems.append(f"not terminal: {final.state}")
    if final.filled_quantity > final.quantity:
        problems.append(f"filled {final.filled_quantity} > quantity {final.quantity}")
    if venue.filled(owner) != final.filled_quantity:
        problems.append(f"venue filled {venue.filled(owner)}, order counts {final.filled_quantity}")
    published: dict[str, Decimal] = {}
    for progress in result["published"]:
        for fill in progress.fills:
            if published.setdefault(fill.fill_id, fill.quantity) != fill.quantity:
                problems.append(f"fill {fill.fill_id} published with two quantities")
    if sum(published.values(), Decimal(0)) != final.filled_quantity:
        problems.append(f"published fills {sum(published.values(), Decimal(0))} != {final.filled_quantity}")
    if venue.violations:
        problems.append(f"two live venue orders: {venue.violations}")
    if live := venue.live_orders(owner):
        problems.append(f"left live at the venue: {[o.client_order_id for o in live]}")
    bound = request_bound(len(result["script"]), result["skipped"])
    if venue.requests[owner] > bound:
        problems.append(f"{venue.requests[owner]} venue requests > bound {bound}")
    if result["pending_updates"]:
        problems.append(f"{len(result['pending_updates'])} updates never returned")
    return problems


@pytest.fixture
def lowered_history_bound(monkeypatch):
    monkeypatch.setattr(order_module, "HISTORY_BOUND", 40)  # continue-as-new fires within a run


async def test_order_workflow_keeps_its_invariants_under_random_venues_and_operators(
        time_env, redis, fast_settings, lowered_history_bound):
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)  # scripted venue errors are expected
    failures = []
    for example in range(EXAMPLES):
        result = await run_example(SEED + example, time_env, redis, fast_settings)
        problems = check(result)
        summary = (f"seed {result['seed']} {result['kind']} native_amend={result['native_amend']} "
                   f"current_rules={result['current_rules']} "
                   f"runs={len(result['runs'])} requests={result['venue'].requests[result['owner']]} "
                   f"script={result['script']} -> {result['final'].state.value} "
                   f"{result['final'].filled_quantity}/{result['final'].quantity}")
        print(summary)
        if problems:
            failures.append(f"{summary}: {problems}")
    assert not failures, "\n".join(failures)
