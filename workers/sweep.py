"""The orphan sweep: live venue orders of ours that no running workflow watches.

Terminate and reset bypass the workflow, so its order can stay working at the venue with nobody
tracking it (and a Temporal UI cancel of an older release did the same). Per venue account, leased
like the poller (one sweeper per account across worker replicas), every `execution.orphan_sweep_interval_s`:

1. list the account's open orders (one venue call) and keep those whose client order id carries our
   prefix (`order-`: client ids derive from workflow ids `order-<signal_id>`, oms.models);
2. find the owning workflow: the `cid:` map the workflow's progress writes, else the id itself (less a
   cancel-and-replace `-r<n>` suffix); a running workflow owns its order, anything else is an orphan
   (a shortened, hashed id without a map is one only if a second sweep still finds it);
3. look the orphan up again (the listing may be a moment old: a workflow that just ended its order
   is no orphan), then by `execution.orphans`: `cancel` (default) cancels it at the venue, `report`
   leaves it working;
4. report it: metrics `tom_orphan_orders` (found in the last sweep) and `tom_orphan_orders_found`
   (by action), an event on `order_events` (the order's last snapshot with the reason; once per order
   and action), its venue fills on `executions` (each once: a fill after the workflow stopped still
   reaches position management), and `orphans:<exchange>:<account>` in Redis, which makes GET /readyz
   `degraded` with the reason until a sweep finds none.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime, timezone
from typing import Literal

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from redis.exceptions import RedisError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.venues import VenueError, VenueRegistry
from activities.venues.gate import background
from messaging import EventSink
from messaging.redis_streams import RedisEventSink
from oms.events import OrderEvent, client_order_key, order_cache_key
from oms.models import Fill, OrderSnapshot
from oms.venue import OPEN_STATUSES, VenueOrderRef, VenueOrderReport
from workers.lease import Lease
from workers.metrics import REGISTRY

log = logging.getLogger("tom.sweep")
CLIENT_ID_PREFIX = "order-"  # every workflow id is order-<signal_id>[-c<n>]: so is every client id we place
_REPLACEMENT = re.compile(r"-r\d+$")
_HASHED = re.compile(r"_[0-9a-f]{12}$")  # client_order_id_for's shortened form: not invertible
LEASE_S = 30
ORPHANS_KEY_PREFIX = "orphans:"
QUERY_TIMEOUT_S = 5.0
SWEEP_PATIENCE_MS = 30_000  # how long a sweep call may wait in a direct venue's gate

ORPHANS = Gauge("tom_orphan_orders", "Venue orders of ours without a running workflow, at the last sweep",
                ["exchange", "account"], registry=REGISTRY)
ORPHANS_FOUND = Counter("tom_orphan_orders_found", "Orphan venue orders found, by what the sweep did",
                        ["exchange", "account", "action"], registry=REGISTRY)


class Orphan(BaseModel):
    exchange: str
    account: str
    client_order_id: str
    order_id: str | None  # the workflow that placed it, where known
    report: VenueOrderReport  # the venue's answer after the sweep acted
    action: Literal["cancelled", "kept", "cancel_failed"]
    reason: str


def orphans_key(exchange: str, account: str) -> str:
    return f"{ORPHANS_KEY_PREFIX}{exchange}:{account}"


async def orphan_reasons(redis: aioredis.Redis) -> list[str]:
    """Why readiness is degraded by orphans: one line per venue account whose last sweep found some.
    Sets `tom_orphan_orders` from the same records (the API process serves /metrics, the sweeps run
    in the workers)."""
    reasons, counts = [], {}
    async for key in redis.scan_iter(match=f"{ORPHANS_KEY_PREFIX}*", count=100):
        raw = await redis.get(key)
        if raw:
            record = json.loads(raw)
            reasons.append(record["reason"])
            counts[tuple(key[len(ORPHANS_KEY_PREFIX):].split(":", 1))] = record["count"]
    ORPHANS.clear()
    for (exchange, account), count in counts.items():
        ORPHANS.labels(exchange=exchange, account=account).set(count)
    return sorted(reasons)


def owner_of(client_order_id: str) -> str | None:
    """The workflow id a client order id was derived from, where it can be told from the id alone."""
    base = _REPLACEMENT.sub("", client_order_id)
    return None if _HASHED.search(base) else base


class OrphanSweep:
    def __init__(self, client: Client, redis: aioredis.Redis, registry: VenueRegistry, exchange: str,
                 account: str = "default", rule: Literal["cancel", "report"] = "cancel",
                 interval_s: float = 60.0, sink: EventSink | None = None) -> None:
        self._client, self._redis, self._registry = client, redis, registry
        self.exchange, self.account, self.rule, self.interval_s = exchange, account, rule, interval_s
        self._lease = Lease(redis, f"sweep:lease:{exchange}:{account}")
        self._sink = sink or RedisEventSink(redis)  # the worker passes the configured transport's
        self.sweeps = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await self._lease.hold(max(LEASE_S, int(self.interval_s * 3))):
                    await self.sweep_once()
            except (VenueError, OSError, RPCError, RedisError) as exc:
                log.warning("orphan sweep %s/%s: %s", self.exchange, self.account, exc)
            except Exception:  # e.g. the event sink's transport: the next round retries
                log.exception("orphan sweep %s/%s failed", self.exchange, self.account)
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    async def sweep_once(self) -> list[Orphan]:
        adapter = self._registry.get(self.exchange)
        orphans = []
        with background(SWEEP_PATIENCE_MS):  # no order waits on the sweep: its calls yield to theirs
            for listed in await adapter.fetch_open(self.account):
                if not listed.client_order_id.startswith(CLIENT_ID_PREFIX):
                    continue  # not placed by us (a person, another system on the same account)
                order_id = await self._redis.get(client_order_key(listed.client_order_id)) or owner_of(
                    listed.client_order_id)
                if order_id is not None and await self._running(order_id):
                    continue
                if order_id is None and await self._first_sighting(listed.client_order_id):
                    continue  # no owner to ask: act only if it is still there at the next sweep
                try:
                    orphan = await self._settle(adapter, listed, order_id)
                except VenueError as error:
                    # Looked at again next sweep; what this one already did is still reported.
                    log.warning("orphan sweep %s/%s: %s not settled: %s", self.exchange, self.account,
                                listed.client_order_id, error)
                    continue
                if orphan is not None:
                    orphans.append(orphan)
        await self._report(orphans)
        self.sweeps += 1
        return orphans

    async def _first_sighting(self, client_order_id: str) -> bool:
        """A hashed client id whose `cid:` map is missing may belong to a workflow whose first
        progress is not recorded yet: the first sighting only marks it."""
        key = f"sweep:{self.exchange}:{self.account}:suspect:{client_order_id}"
        return bool(await self._redis.set(key, 1, nx=True, ex=max(LEASE_S, int(self.interval_s * 3))))

    async def _running(self, order_id: str) -> bool:
        try:
            description = await self._client.get_workflow_handle(order_id).describe()
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING

    async def _settle(self, adapter, listed: VenueOrderReport, order_id: str | None) -> Orphan | None:
        ref = VenueOrderRef(exchange=self.exchange, account=self.account, client_order_id=listed.client_order_id,
                            symbol=listed.symbol)
        current = await adapter.fetch(ref)
        if current.status not in OPEN_STATUSES:
            return None  # ended since the listing
        owner = f"workflow {order_id}" if order_id else "no known workflow"
        where = f"{self.exchange}/{self.account} order {listed.client_order_id}"
        if self.rule == "report":
            action, report = "kept", current
            reason = f"orphan: {where} is live ({owner} is not running); kept (execution.orphans: report)"
        else:
            try:
                report, action = await adapter.cancel(ref), "cancelled"
                reason = f"orphan: {where} was live ({owner} is not running); cancelled at the venue"
            except VenueError as error:
                report, action = current, "cancel_failed"
                reason = f"orphan: {where} is live ({owner} is not running); cancel failed: {error}"
        log.warning("%s (filled %s)", reason, report.filled_quantity)
        return Orphan(exchange=self.exchange, account=self.account, client_order_id=listed.client_order_id,
                      order_id=order_id, report=report, action=action, reason=reason)

    async def _report(self, orphans: list[Orphan]) -> None:
        ORPHANS.labels(exchange=self.exchange, account=self.account).set(len(orphans))
        key = orphans_key(self.exchange, self.account)
        if not orphans:
            await self._redis.delete(key)
            return
        for orphan in orphans:
            ORPHANS_FOUND.labels(exchange=self.exchange, account=self.account, action=orphan.action).inc()
            await self._publish(orphan)
        summary = (f"{len(orphans)} orphan order(s) at {self.exchange}/{self.account} "
                   f"({', '.join(sorted({o.action for o in orphans}))}): "
                   + ", ".join(o.client_order_id for o in orphans[:5]))
        await self._redis.set(key, json.dumps({"count": len(orphans), "reason": summary}),
                              ex=max(60, int(self.interval_s * 3)))

    async def _publish(self, orphan: Orphan) -> None:
        """An order_events entry with the order's last snapshot and the sweep's reason (once per
        order and action), and the venue's fills on `executions` under the workflow's own fill ids,
        so a fill nobody recorded reaches position management, and one already recorded is not
        repeated."""
        if orphan.order_id is None:
            log.error("%s: no workflow known, no order event", orphan.reason)
            return
        snapshot = await self._snapshot(orphan.order_id)
        if snapshot is None:
            log.error("%s: no snapshot of %s, no order event", orphan.reason, orphan.order_id)
            return
        now = datetime.now(timezone.utc)
        fills = []
        for venue_fill in orphan.report.fills:
            fill = Fill(fill_id=f"{orphan.client_order_id}:{venue_fill.trade_id}", order_id=orphan.order_id,
                        strategy_id=snapshot.strategy_id, symbol=snapshot.symbol, side=snapshot.side,
                        quantity=venue_fill.quantity, price=venue_fill.price, fee=venue_fill.fee,
                        fee_currency=venue_fill.fee_currency, liquidity=venue_fill.liquidity,
                        venue=self.exchange, at=venue_fill.at)
            fills.append(fill)
        event_id = f"{orphan.order_id}:orphan:{orphan.client_order_id}:{orphan.action}"
        snapshot = snapshot.model_copy(update={"reason": orphan.reason, "updated_at": now})
        event = OrderEvent(event_id=event_id, order_id=orphan.order_id, state=snapshot.state, at=now,
                           reason=orphan.reason, snapshot=snapshot)
        await self._sink.publish([], fills)  # fills first, as before: the event reports them
        await self._sink.publish([event], [])

    async def _snapshot(self, order_id: str) -> OrderSnapshot | None:
        raw = await self._redis.get(order_cache_key(order_id))
        if raw:
            return OrderSnapshot.model_validate_json(raw)
        try:  # a closed workflow still answers queries (a worker replays it)
            return await asyncio.wait_for(self._client.get_workflow_handle(order_id).query(
                "status", result_type=OrderSnapshot), QUERY_TIMEOUT_S)
        except (RPCError, asyncio.TimeoutError) as error:
            log.warning("no snapshot of %s: %s", order_id, error)
            return None


async def run_sweeps(client: Client, redis: aioredis.Redis, registry: VenueRegistry, accounts: list[tuple[str, str]],
                     stop: asyncio.Event, rule: Literal["cancel", "report"], interval_s: float,
                     sink: EventSink | None = None) -> None:
    sweeps = [OrphanSweep(client, redis, registry, exchange, account, rule, interval_s, sink)
              for exchange, account in accounts]
    await asyncio.gather(*(s.run(stop) for s in sweeps))
