"""`tom api`: the HTTP API on service.port, and the recorder (the database's one writer).

Reads come from the database the recorder keeps (lists, positions, report), the Redis order cache
(one order) and Temporal (the `status` query when the cache has nothing). Cancel and amend go
through the workflow's updates, so the validator's refusal comes back as 409 with its reason.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from analytics.report import report_document
from config.settings import Settings
from oms.events import order_cache_key
from oms.models import AmendRequest, CancelRequest, OrderSnapshot, OrderState, Signal
from activities.venues.gate import gate_status
from activities.publish import ANOMALIES_KEY
from activities.venues.metering import observe_venue_requests
from workers import metrics
from workers.consumer import consumer_lag
from workers.intake import InvalidSignal, UnstartableSignal, loads_strict, parse_signal, start_order
from workers.cli import UserError
from workers.recorder import Recorder
from workers.runtime import configure_logging, connect_temporal, redis_client
from workers.body_limit import BodyLimit
from workers.api_security import ApiSecurity, document as document_security, open_bind_refusal
from workers.sweep import orphan_reasons
from storage import OrderStore, open_storage

log = logging.getLogger("tom.api")
ORDER_ID = Annotated[str, Path(pattern=r"^order-[A-Za-z0-9_.:-]{1,64}(-c[0-9]{1,6})?$",
                                description="order-<signal_id>, or a parent order's child order-<signal_id>-c<n>")]


class SignalAccepted(BaseModel):
    order_id: str
    created: bool  # false: this signal was already received (idempotent)


class OrderPage(BaseModel):
    orders: list[OrderSnapshot]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    detail: str


class CheckResult(BaseModel):
    ok: bool
    detail: str | None = None


class VenueState(BaseModel):
    """A direct venue account as every worker sees it (shared in Redis)."""

    ok: bool  # circuit not open and not paused
    circuit: str  # closed | open | half_open
    failures: int
    opened: int  # times the breaker opened
    open_for_s: float
    paused_for_s: float  # a 429/418 pause still running
    pause_reason: str | None = None
    pauses: int
    last_error: str | None = None


class RecorderState(BaseModel):
    """The recorder in this process (workers/recorder.py)."""

    running: bool
    recorded: int
    set_aside: int  # entries it could not write, kept on the recorder.dead stream with the reason
    consecutive_failures: int  # rounds in a row that wrote nothing (database or Redis failing)
    restarts: int  # times its task ended unexpectedly and was started again
    last_error: str | None = None
    last_error_age_s: float | None = None


class Readiness(BaseModel):
    # Ready to serve: Temporal, Redis and the database answer, and the recorder (when this process
    # runs it) is running and writing. A recorder that cannot write at all (RECORDER_STUCK failed
    # rounds in a row) makes the pod unready: its reads would be stale. An entry it set aside, or a
    # failure it recovered from in the last RECORDER_DEGRADED_S, shows as `degraded`, ready stays true.
    # A venue that is down does not make the API unready (cancels and reads must keep working); it
    # shows under `venues` and `degraded`.
    ready: bool
    degraded: bool = False
    checks: dict[str, CheckResult]
    venues: dict[str, VenueState] = {}
    recorder: RecorderState | None = None
    degraded_reasons: list[str] = []  # e.g. orphan venue orders found by the sweep (workers/sweep.py)


RECORDER_STUCK = 3
RECORDER_DEGRADED_S = 300.0


class Position(BaseModel):
    strategy_id: str
    symbol: str
    net_quantity: Decimal
    average_buy_price: float | None = None
    average_sell_price: float | None = None
    fees: Decimal
    fills: int


class Services:
    """What the API talks to; built in the lifespan, or handed in by tests."""

    def __init__(self, settings: Settings, client: Client | None, redis: aioredis.Redis,
                 store: OrderStore | None) -> None:
        self.settings, self.client, self.redis, self.store = settings, client, redis, store
        self.recorder: Recorder | None = None
        self.recorder_task: asyncio.Task | None = None
        self.recorder_restarts = 0


async def _supervise_recorder(svc: Services, stop: asyncio.Event) -> None:
    """Run the recorder until stop; should its task ever end on an error, report it and start it again."""
    while not stop.is_set():
        try:
            await svc.recorder.run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            svc.recorder_restarts += 1
            svc.recorder.record_failure(exc)
            log.exception("recorder stopped on an error; restarting")
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


def recorder_state(svc: Services) -> RecorderState | None:
    if svc.recorder is None:
        return None
    h = svc.recorder.health()
    age = time.time() - h["last_error_at"] if h["last_error_at"] else None
    running = svc.recorder_task is not None and not svc.recorder_task.done()
    return RecorderState(running=running, recorded=h["recorded"], set_aside=h["set_aside"],
                         consecutive_failures=h["consecutive_failures"], restarts=svc.recorder_restarts,
                         last_error=h["last_error"], last_error_age_s=round(age, 1) if age is not None else None)


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def readable(errors: list[dict]) -> str:
    """Validation errors as one line: `field: why; ...`."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error["loc"] if p != "body") or "body"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def create_app(settings: Settings, services: Services | None = None, run_recorder: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = asyncio.Event()
        tasks: list[asyncio.Task] = []
        own = services is None
        svc = services or Services(settings, None, redis_client(settings), _open_store(settings))
        app.state.services = svc
        if own:
            tasks.append(asyncio.create_task(_connect_temporal_forever(svc, stop)))
        if run_recorder and svc.store is not None:
            svc.recorder = Recorder(svc.redis, svc.store)
            svc.recorder_task = asyncio.create_task(_supervise_recorder(svc, stop))
            tasks.append(svc.recorder_task)
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own:
                await svc.redis.aclose()
                if svc.store is not None:
                    svc.store.close()

    app = FastAPI(title="trading-order-management", version="0.1.0", lifespan=lifespan,
                  description="Signals in, orders out: each order is a durable Temporal workflow.")
    if services is not None:
        app.state.services = services
    app.add_middleware(BodyLimit, limit=settings.service.max_request_bytes)
    # Outermost: a request is authenticated and judged before its body is read (workers/api_security.py).
    app.add_middleware(ApiSecurity, service=settings.service, routes_of=lambda: app.router.routes)

    @app.exception_handler(RequestValidationError)
    async def readable_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """One readable line, the same shape as every other error: {"detail": "..."}."""
        return _problem(422, readable(exc.errors()))
    responses = {404: {"model": Problem}, 409: {"model": Problem}, 413: {"model": Problem},
                 422: {"model": Problem}, 503: {"model": Problem}}

    def svc(request: Request) -> Services:
        return request.app.state.services

    def temporal(request: Request) -> Client:
        client = svc(request).client
        if client is None:
            raise HTTPException(503, "Temporal is not reachable yet")
        return client

    def store(request: Request) -> OrderStore:
        db = svc(request).store
        if db is None:
            raise HTTPException(503, "the database is not available in this process")
        return db

    # The body is documented as a Signal but parsed by workers.intake, so the API and the stream
    # give the same reasons for the same bad input.
    signal_schema = Signal.model_json_schema(ref_template="#/components/schemas/{model}")
    signal_body = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        k: v for k, v in signal_schema.items() if k != "$defs"}}}}}

    @app.post("/signals", status_code=202, response_model=SignalAccepted, responses=responses,
              openapi_extra=signal_body)
    async def post_signal(request: Request) -> Any:
        """Start the order for a signal; the same signal twice makes one order."""
        try:
            parsed = parse_signal(await request.body(), settings)
        except InvalidSignal as exc:
            metrics.SIGNALS_REJECTED.inc()
            return _problem(422, str(exc))
        try:
            result = await start_order(temporal(request), settings, parsed)
        except UnstartableSignal as exc:
            metrics.SIGNALS_REJECTED.inc()
            return _problem(422, str(exc))
        except RPCError as exc:
            raise HTTPException(503, f"Temporal unavailable: {exc.message}") from None
        return SignalAccepted(order_id=result.order_id, created=result.created)

    @app.get("/orders", response_model=OrderPage, responses=responses)
    async def list_orders(request: Request, state: OrderState | None = None,
                          symbol: Annotated[str | None, Query(max_length=41)] = None,
                          strategy: Annotated[str | None, Query(max_length=64)] = None,
                          exchange: Annotated[str | None, Query(max_length=32)] = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50,
                          offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> OrderPage:
        filters = {"state": state.value if state else None, "symbol": symbol, "strategy_id": strategy,
                   "exchange": exchange}
        orders, total = await asyncio.to_thread(store(request).list_orders, filters, limit, offset)
        return OrderPage(orders=orders, total=total, limit=limit, offset=offset)

    @app.get("/orders/{order_id}", response_model=OrderSnapshot, responses=responses)
    async def get_order(request: Request, order_id: ORDER_ID) -> Any:
        cached = await svc(request).redis.get(order_cache_key(order_id))
        if cached:
            return OrderSnapshot.model_validate_json(cached)
        try:
            return await temporal(request).get_workflow_handle(order_id).query("status", result_type=OrderSnapshot)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return _problem(404, f"no order {order_id}")
            raise HTTPException(503, f"Temporal unavailable: {exc.message}") from None

    async def _update(request: Request, order_id: str, name: str, arg: BaseModel) -> Any:
        handle = temporal(request).get_workflow_handle(order_id)
        try:
            return await handle.execute_update(name, arg, result_type=OrderSnapshot)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            detail = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            return _problem(409, detail)
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                raise HTTPException(503, f"Temporal unavailable: {exc.message}") from None
        # The workflow is not running: a finished order (409) or no such order (404).
        try:
            final = await handle.query("status", result_type=OrderSnapshot)
        except RPCError:
            return _problem(404, f"no order {order_id}")
        return _problem(409, f"order is already {final.state.value}")

    # Cancel and amend bodies are parsed as strictly as signals (duplicate keys, NaN refused), then
    # validated by their models (unknown fields refused, values bounded); documented as those models.
    def body_of(model: type[BaseModel], required: bool) -> dict[str, Any]:
        return {"requestBody": {"required": required, "content": {"application/json": {
            "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

    async def strict_body(request: Request, model: type[BaseModel], required: bool) -> BaseModel | JSONResponse:
        raw = await request.body()
        if not raw.strip():
            return _problem(422, "body: a JSON object is required") if required else model()
        try:
            data = loads_strict(raw)
        except InvalidSignal as exc:
            return _problem(422, f"body: {exc}")
        except ValueError as exc:  # not JSON, not UTF-8, a number Python will not convert
            return _problem(422, f"body: malformed JSON: {str(exc).split(':')[0][:120]}")
        except RecursionError:
            return _problem(422, "body: malformed JSON: nested too deeply")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            return _problem(422, readable(exc.errors(include_url=False)))

    @app.post("/orders/{order_id}/cancel", response_model=OrderSnapshot, responses=responses,
              openapi_extra=body_of(CancelRequest, required=False))
    async def cancel_order(request: Request, order_id: ORDER_ID) -> Any:
        """Cancel through the `cancel_order` update; returns the order once the venue confirmed."""
        body = await strict_body(request, CancelRequest, required=False)
        return body if isinstance(body, JSONResponse) else await _update(request, order_id, "cancel_order", body)

    @app.patch("/orders/{order_id}", response_model=OrderSnapshot, responses=responses,
               openapi_extra=body_of(AmendRequest, required=True))
    async def amend_order(request: Request, order_id: ORDER_ID) -> Any:
        """Amend quantity and/or limit price through the `amend_order` update."""
        body = await strict_body(request, AmendRequest, required=True)
        return body if isinstance(body, JSONResponse) else await _update(request, order_id, "amend_order", body)

    @app.get("/positions", response_model=list[Position], responses=responses)
    async def positions(request: Request) -> Any:
        return await asyncio.to_thread(store(request).positions)

    @app.get("/report", responses=responses)
    async def report(request: Request, since: str | None = None, until: str | None = None) -> Any:
        """Execution quality and transaction costs (analytics/report.py) of the orders created in
        [since, until) (ISO 8601 with a timezone): the document `tom report --json` prints."""
        try:
            return await asyncio.to_thread(report_document, store(request), since, until)
        except ValueError as exc:
            return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "environment": settings.environment}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    async def readyz(request: Request) -> Any:
        s = svc(request)
        checks = {
            "temporal": await _check(_temporal_ok(s)),
            "redis": await _check(s.redis.ping()),
            "database": await _check(_database_ok(s)),
        }
        venues = await _venue_states(s)
        recorder = recorder_state(s)
        recorder_degraded = False
        if recorder is not None:
            stuck = not recorder.running or recorder.consecutive_failures >= RECORDER_STUCK
            checks["recorder"] = CheckResult(ok=not stuck, detail=recorder.last_error if stuck else None)
            recorder_degraded = recorder.last_error_age_s is not None and recorder.last_error_age_s < RECORDER_DEGRADED_S
        ready = all(c.ok for c in checks.values())
        try:
            reasons = await asyncio.wait_for(orphan_reasons(s.redis), 2.0)
        except Exception as exc:  # Redis down: the redis check already says so
            log.warning("orphan reasons: %s", exc)
            reasons = []
        degraded = recorder_degraded or not all(v.ok for v in venues.values()) or bool(reasons)
        body = Readiness(ready=ready, degraded=degraded, checks=checks, venues=venues, recorder=recorder,
                         degraded_reasons=reasons)
        return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}}}})
    async def prometheus(request: Request) -> Response:
        s = svc(request)
        try:
            lag = await consumer_lag(s.redis, settings)
            metrics.CONSUMER_LAG.set(lag["lag"])
            metrics.CONSUMER_PENDING.set(lag["pending"])
            metrics.observe_anomalies(await s.redis.hgetall(ANOMALIES_KEY))
            if s.store is not None:
                metrics.observe_store(await asyncio.to_thread(s.store.report))
                metrics.observe_orders(await asyncio.to_thread(s.store.order_snapshots))
            await _venue_states(s)
            await orphan_reasons(s.redis)
            await observe_venue_requests(s.redis)
        except Exception as exc:  # metrics must render even when a dependency is down
            log.warning("metrics collection: %s", exc)
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    _register_schemas(app, signal_schema.get("$defs", {}), settings)
    return app


def _register_schemas(app: FastAPI, definitions: dict[str, Any], settings: Settings) -> None:
    """Add the Signal's nested models to the generated OpenAPI components, and the security checks."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            document_security(spec, settings.service)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi


async def _check(awaitable) -> CheckResult:
    try:
        ok = await asyncio.wait_for(awaitable, 2.0)
        return CheckResult(ok=bool(ok))
    except Exception as exc:
        return CheckResult(ok=False, detail=f"{type(exc).__name__}: {exc}"[:200])


async def _temporal_ok(s: Services) -> bool:
    if s.client is None:
        raise RuntimeError("not connected")
    await s.client.workflow_service.get_system_info(GetSystemInfoRequest())
    return True


async def _database_ok(s: Services) -> bool:
    if s.store is None:
        raise RuntimeError(f"{s.settings.database.type} is written by another process")
    return await asyncio.to_thread(s.store.ping)


def direct_accounts(settings: Settings) -> list[tuple[str, str]]:
    direct = settings.execution.direct
    if settings.execution.mode != "direct" and not direct.accounts_in_use():
        return []
    return [(name, direct.account(name).account) for name in direct.exchanges]


async def _venue_states(s: Services) -> dict[str, VenueState]:
    """Breaker and rate-limit pause of each direct venue account, from the shared gate in Redis."""
    states = {}
    for exchange, account in direct_accounts(s.settings):
        try:
            status = await asyncio.wait_for(gate_status(s.redis, exchange, account), 2.0)
        except Exception as exc:  # Redis down: the redis check already says so
            log.warning("venue state %s: %s", exchange, exc)
            continue
        ok = status["circuit"] != "open" and status["paused_for_s"] == 0
        states[exchange] = VenueState(ok=ok, **status)
        metrics.observe_venue(exchange, account, status)
    return states


def _open_store(settings: Settings) -> OrderStore | None:
    return open_storage(settings)


async def _connect_temporal_forever(svc: Services, stop: asyncio.Event) -> None:
    """Keep trying: the API serves health and cached reads while Temporal starts."""
    delay = 0.2
    while not stop.is_set() and svc.client is None:
        try:
            svc.client = await connect_temporal(svc.settings)
        except Exception as exc:
            log.warning("Temporal not reachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


def run(settings: Settings, args) -> int:
    import uvicorn

    configure_logging(settings)
    host = settings.service.bind  # the listening address; service.host is only advertised
    refusal = open_bind_refusal(host, settings.service)
    if refusal:
        raise UserError(refusal)
    tokens = settings.service.active_tokens()
    log.info("API authentication: %s", f"tokens {', '.join(sorted(tokens))}" if tokens else "off (loopback only)")
    uvicorn.run(create_app(settings), host=host, port=settings.service.port,
                log_level=settings.orders.log_level.value.lower(), access_log=False,
                log_config=None)  # uvicorn's lines through configure_logging's handler (JSON, redacted)
    return 0
