"""The QuantConnect adapter against a fake QuantConnect API over real HTTP, and one real order."""
from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal

import pytest
import pytest_asyncio

from activities.venues.quantconnect import QuantConnectVenue, auth_headers, build_quantconnect_adapter, lean_symbol
from activities.venues import VenueError
from config.settings import ConfigError, Settings, SimulationSettings, load_settings
from oms.models import OrderState, OrderType, Side, TimeInForce
from oms.venue import VenueAmendRequest, VenueErrorType, VenueOrderRef, VenueOrderRequest, VenueOrderStatus
from tests.conftest import REPO, free_port
from tests.fakes.quantconnect import QuantConnectFake
from tests.helpers import executions, make_signal, run_order

USER, TOKEN, PROJECT = "31337", "qc-token-do-not-leak", 4242
# A flat price path (ETH/USDT at its base 3000) and little slippage: fills are predictable.
SIM = SimulationSettings(delay_ms=0, volatility_bps=0, slippage=0.0001)


@pytest_asyncio.fixture
async def fake():
    server = QuantConnectFake({USER: TOKEN}, [PROJECT], sim=SIM)
    await server.start()
    yield server
    await server.stop()


def qc_settings(base_url: str, token: str = TOKEN, **extra) -> Settings:
    qc = {"api_key": token, "project_id": str(PROJECT), "user_id": USER, "base_url": base_url,
          "confirm_timeout_ms": 1000, **extra}
    return Settings().with_overrides(execution={"mode": "quantconnect", "quantconnect": qc})


@pytest_asyncio.fixture
async def venue(fake):
    adapter = build_quantconnect_adapter(qc_settings(fake.base_url))
    yield adapter
    await adapter.close()


def order(side="buy", order_type=OrderType.LIMIT, quantity="0.1", limit_price="1000", tif=TimeInForce.GTC,
          symbol="ETH/USDT") -> VenueOrderRequest:
    return VenueOrderRequest(exchange="quantconnect", client_order_id=f"order-{uuid.uuid4().hex[:12]}",
                             symbol=symbol, side=Side(side), order_type=order_type, quantity=Decimal(quantity),
                             limit_price=Decimal(limit_price) if limit_price else None, time_in_force=tif)


def ref(request: VenueOrderRequest) -> VenueOrderRef:
    return VenueOrderRef(exchange="quantconnect", client_order_id=request.client_order_id, symbol=request.symbol)


def test_lean_symbol_and_auth_follow_the_documented_recipes():
    assert lean_symbol("BTC/USD", "coinbase") == {"id": "BTCUSD 2XR", "value": "BTCUSD"}  # the docs' example
    headers = auth_headers("7", "tok", 1_700_000_000)
    assert headers["Timestamp"] == "1700000000"
    import base64
    import hashlib

    user, _, digest = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode().partition(":")
    assert user == "7" and digest == hashlib.sha256(b"tok:1700000000").hexdigest()


async def test_resting_limit_order_submit_fetch_cancel(fake, venue):
    request = order(limit_price="1000")  # far below the 3000 market: rests
    placed = await venue.submit(request)
    assert placed.status == VenueOrderStatus.NEW and placed.venue_order_id == "1"
    assert placed.quantity == Decimal("0.1") and placed.limit_price == Decimal("1000")
    [sent] = fake.commands
    assert sent == {"$type": "OrderCommand", "symbol": {"id": "ETHUSDT 2XR", "value": "ETHUSDT"},
                    "order_type": "limit", "quantity": "0.1", "limit_price": 1000.0, "stop_price": 0,
                    "tag": f"tom:{request.client_order_id}"}
    assert (await venue.fetch(ref(request))).status == VenueOrderStatus.NEW
    assert [r.client_order_id for r in await venue.fetch_open("default")] == [request.client_order_id]
    cancelled = await venue.cancel(ref(request))
    assert cancelled.status == VenueOrderStatus.CANCELLED
    again = await venue.cancel(ref(request))  # a finished order: its final report, no new command
    assert again.status == VenueOrderStatus.CANCELLED and len(fake.commands) == 2
    assert await venue.fetch_open("default") == []


async def test_sell_market_order_fills_with_fees_and_is_idempotent(fake, venue):
    request = order(side="sell", order_type=OrderType.MARKET, limit_price=None, quantity="0.2")
    report = await venue.submit(request)
    assert report.status == VenueOrderStatus.FILLED and report.filled_quantity == Decimal("0.2")
    assert fake.commands[0]["quantity"] == "-0.2" and fake.commands[0]["order_type"] == "market"
    assert all(f.fee > 0 and f.fee_currency == "USDT" for f in report.fills)
    assert len({f.trade_id for f in report.fills}) == len(report.fills)
    assert (await venue.submit(request)).fills == report.fills  # same client id: the same order
    assert len(fake.orders(PROJECT)) == 1 and len(fake.commands) == 1


async def test_ioc_is_emulated_and_fok_refused(fake, venue):
    resting = order(limit_price="2900", tif=TimeInForce.IOC)  # below the ask: nothing to take
    report = await venue.submit(resting)
    assert report.status == VenueOrderStatus.EXPIRED and report.filled_quantity == 0
    assert [c["$type"] for c in fake.commands] == ["OrderCommand", "CancelOrderCommand"]
    crossing = order(limit_price="3010", tif=TimeInForce.IOC)  # a collared market buy
    assert (await venue.submit(crossing)).status == VenueOrderStatus.FILLED
    with pytest.raises(VenueError) as info:
        await venue.submit(order(tif=TimeInForce.FOK))
    assert info.value.kind == VenueErrorType.REJECTED and "FOK" in str(info.value)
    assert len(fake.orders(PROJECT)) == 2


async def test_native_amend_of_price_and_quantity(fake, venue):
    request = order(limit_price="1000", quantity="0.1")
    await venue.submit(request)
    amend = VenueAmendRequest(**ref(request).model_dump(), limit_price=Decimal("1100"), quantity=Decimal("0.3"))
    report = await venue.amend(amend)
    assert report.limit_price == Decimal("1100") and report.quantity == Decimal("0.3")
    assert fake.commands[-1] == {"$type": "UpdateOrderCommand", "order_id": 1, "quantity": "0.3", "limit_price": 1100.0}
    market = order(order_type=OrderType.MARKET, limit_price=None)
    await venue.submit(market)
    with pytest.raises(VenueError) as info:  # filled already
        await venue.amend(VenueAmendRequest(**ref(market).model_dump(), quantity=Decimal("1")))
    assert info.value.kind == VenueErrorType.REJECTED


async def test_not_found(fake, venue):
    unknown = order()
    report = await venue.fetch(ref(unknown))
    assert report.status == VenueOrderStatus.NOT_FOUND and report.client_order_id == unknown.client_order_id
    for call in (venue.cancel(ref(unknown)), venue.amend(VenueAmendRequest(**ref(unknown).model_dump(),
                                                                           limit_price=Decimal("1")))):
        with pytest.raises(VenueError) as info:
            await call
        assert info.value.kind == VenueErrorType.NOT_FOUND
    assert fake.commands == []


async def test_lost_response_then_retry_places_exactly_one_order(fake, venue):
    request = order(limit_price="1000")
    fake.fail_next("lost_response")
    with pytest.raises(VenueError) as info:
        await venue.submit(request)
    assert info.value.kind == VenueErrorType.UNKNOWN_OUTCOME
    assert (await venue.fetch(ref(request))).status == VenueOrderStatus.NEW  # reconciliation finds it
    assert (await venue.submit(request)).venue_order_id == "1"
    other_worker = build_quantconnect_adapter(qc_settings(fake.base_url))
    try:
        assert (await other_worker.submit(request)).venue_order_id == "1"
    finally:
        await other_worker.close()
    assert len(fake.orders(PROJECT)) == 1 and len(fake.commands) == 1


async def test_server_error_is_an_unknown_outcome_resolved_by_lookup(fake, venue):
    request = order(limit_price="1000")
    fake.fail_next("server_error")
    with pytest.raises(VenueError) as info:
        await venue.submit(request)
    assert info.value.kind == VenueErrorType.UNKNOWN_OUTCOME and "500" in str(info.value)
    # This process sent it moments ago: pending, never NOT_FOUND (which would trigger a resubmit).
    assert (await venue.fetch(ref(request))).status == VenueOrderStatus.NEW
    fresh = build_quantconnect_adapter(qc_settings(fake.base_url, listing_grace_s=0))
    try:
        assert (await fresh.fetch(ref(request))).status == VenueOrderStatus.NOT_FOUND
        assert (await fresh.submit(request)).status == VenueOrderStatus.NEW
    finally:
        await fresh.close()
    assert len(fake.orders(PROJECT)) == 1


async def test_listing_lag_never_sends_twice(fake, redis):
    fake.listing_delay_s = 1.5
    settings = qc_settings(fake.base_url, confirm_timeout_ms=200)
    first = build_quantconnect_adapter(settings, redis)
    second = build_quantconnect_adapter(settings, redis)  # another worker, sharing the ledger
    try:
        request = order(limit_price="1000")
        report = await first.submit(request)
        assert report.status == VenueOrderStatus.NEW and report.venue_order_id is None
        assert (await second.submit(request)).venue_order_id is None
        assert (await second.fetch(ref(request))).status == VenueOrderStatus.NEW
        with pytest.raises(VenueError) as info:
            await second.cancel(ref(request))
        assert info.value.kind == VenueErrorType.UNKNOWN_OUTCOME
        assert len(fake.commands) == 1
        await asyncio.sleep(1.5)
        assert (await second.fetch(ref(request))).venue_order_id == "1"
    finally:
        await first.close()
        await second.close()


async def test_wrong_key_is_rejected_clearly_without_leaking_it(fake, caplog):
    caplog.set_level(logging.DEBUG)
    bad = build_quantconnect_adapter(qc_settings(fake.base_url, token="wrong-token-1234"))
    try:
        for call in (bad.submit(order()), bad.fetch(ref(order())), bad.authenticate()):
            with pytest.raises(VenueError) as info:
                await call
            message = str(info.value)
            assert info.value.kind == VenueErrorType.REJECTED
            assert "refused the credentials" in message and "user_id" in message
            assert "wrong-token-1234" not in message
    finally:
        await bad.close()
    assert fake.commands == [] and sum(fake.calls.values()) == 0
    assert "wrong-token-1234" not in caplog.text and TOKEN not in caplog.text


async def test_fake_refuses_stale_timestamps_with_the_envelope(fake):
    import time

    import aiohttp

    async with aiohttp.ClientSession() as session:
        headers = auth_headers(USER, TOKEN, time.time() - 7300)
        async with session.post(f"{fake.base_url}/authenticate", json={}, headers=headers) as response:
            assert response.status == 401 and "WWW-Authenticate" in response.headers
            assert (await response.json()) == {"success": False, "errors": ["Hash doesn't match."]}


async def test_rate_limit_and_unreachable(fake, venue):
    fake.fail_next("rate_limit", retry_after=2.5)
    with pytest.raises(VenueError) as info:
        await venue.submit(order())
    assert info.value.kind == VenueErrorType.RATE_LIMITED and info.value.retry_after_s == 2.5
    assert fake.commands == []
    fake.fail_next("rate_limit", endpoint="/live/orders/read")
    with pytest.raises(VenueError) as info:
        await venue.fetch(ref(order()))
    assert info.value.kind == VenueErrorType.RATE_LIMITED
    request = order()
    assert (await venue.submit(request)).status == VenueOrderStatus.NEW  # the pause is over
    fake.fail_next("server_error", endpoint="/live/orders/read")
    with pytest.raises(VenueError) as info:  # a failed read changed nothing
        await venue.fetch(ref(request))
    assert info.value.kind == VenueErrorType.TRANSIENT
    nowhere = build_quantconnect_adapter(qc_settings(f"http://127.0.0.1:{free_port()}/api/v2"))
    try:
        with pytest.raises(VenueError) as info:
            await nowhere.submit(order())
        assert info.value.kind == VenueErrorType.TRANSIENT
    finally:
        await nowhere.close()


async def test_algorithm_refusal_and_unknown_project(fake, venue):
    invalid = order(symbol="NOPE/USDT", order_type=OrderType.MARKET, limit_price=None)
    report = await venue.submit(invalid)
    assert report.status == VenueOrderStatus.REJECTED and "not found in your security list" in report.reason
    elsewhere = build_quantconnect_adapter(qc_settings(fake.base_url).with_overrides(execution={
        "mode": "quantconnect", "quantconnect": {"api_key": TOKEN, "project_id": "1", "user_id": USER,
                                                 "base_url": fake.base_url}}))
    try:
        with pytest.raises(VenueError) as info:
            await elsewhere.submit(order())
        assert info.value.kind == VenueErrorType.REJECTED and "No live algorithm" in str(info.value)
    finally:
        await elsewhere.close()
    with pytest.raises(VenueError) as info:
        await venue.market("BTCUSDT")
    assert info.value.kind == VenueErrorType.REJECTED


def test_configuration_of_the_quantconnect_route(tmp_path):
    env = {"QC_API_KEY": "k", "QC_PROJECT_ID": "42", "QC_USER_ID": "99"}
    dev = load_settings(REPO / "config" / "dev.yaml", env=env)
    assert dev.execution.quantconnect.user_id == "99" and dev.execution.quantconnect.market == "coinbase"
    assert isinstance(build_quantconnect_adapter(dev), QuantConnectVenue)
    without_user = load_settings(REPO / "config" / "dev.yaml", env={"QC_API_KEY": "k", "QC_PROJECT_ID": "42"})
    with pytest.raises(ConfigError, match=r"dev\.yaml: execution\.quantconnect\.user_id: mode quantconnect needs"):
        build_quantconnect_adapter(without_user)
    path = tmp_path / "bad.yaml"
    path.write_text("execution:\n  quantconnect:\n    user_id: alice\n")
    with pytest.raises(ConfigError, match=r"execution\.quantconnect\.user_id: must be a number"):
        load_settings(path, env={})
    path.write_text("execution:\n  quantconnect:\n    market: nasdaq\n")
    with pytest.raises(ConfigError, match=r"execution\.quantconnect\.market"):
        load_settings(path, env={})


async def test_order_workflow_fills_through_quantconnect(temporal_env, fast_settings, redis, task_queue, fake):
    from workers.worker import build_registry, running_worker

    execution = fast_settings.execution.model_dump(mode="json")
    settings = fast_settings.with_overrides(execution={
        **execution, "mode": "quantconnect",
        "quantconnect": {"api_key": TOKEN, "project_id": str(PROJECT), "user_id": USER, "base_url": fake.base_url}})
    registry = await build_registry(settings, redis)
    try:
        async with running_worker(temporal_env.client, settings, redis, registry):
            signal = make_signal(symbol="ETH/USDT", quantity="0.1", reference_price="3000")
            snap = await run_order(temporal_env.client, task_queue, signal)
    finally:
        await registry.close()
    assert snap.state == OrderState.FILLED, snap.reason
    assert snap.exchange == "quantconnect" and snap.filled_quantity == Decimal("0.1")
    [placed] = fake.orders(PROJECT)
    assert placed.tag == f"tom:{snap.client_order_id}|IOC"  # the collared market order
    fills = await executions(redis)
    assert sum(Decimal(f["quantity"]) for f in fills) == Decimal("0.1")
    assert {f["venue"] for f in fills} == {"quantconnect"} and len({f["fill_id"] for f in fills}) == len(fills)


# Every Lean OrderStatus as the REST API sends it (an integer), through the adapter over HTTP:
# (status, without fills, with a partial fill). 4 is no Lean status: unrecognized, never guessed.
_S = VenueOrderStatus
LEAN_WIRE_ROWS = [
    (0, _S.NEW, _S.PARTIALLY_FILLED), (1, _S.NEW, _S.PARTIALLY_FILLED), (2, _S.NEW, _S.PARTIALLY_FILLED),
    (3, _S.UNRECOGNIZED, _S.UNRECOGNIZED),  # Filled without the fills to match is not believed
    (5, _S.CANCELLED, _S.CANCELLED), (6, _S.NEW, _S.PARTIALLY_FILLED), (7, _S.REJECTED, _S.CANCELLED),
    (8, _S.NEW, _S.PARTIALLY_FILLED), (9, _S.NEW, _S.PARTIALLY_FILLED), (4, _S.UNRECOGNIZED, _S.UNRECOGNIZED),
]


async def test_every_lean_order_status_maps_with_the_fills_it_carries(fake, venue):
    from datetime import datetime, timezone

    from oms.venue import VenueFill

    request = order(limit_price="1000", quantity="0.1")
    await venue.submit(request)
    (live,) = fake.orders(PROJECT)
    for lean, without_fills, with_fills in LEAN_WIRE_ROWS:
        live.lean_status = lean
        report = await venue.fetch(ref(request))
        assert report.status == without_fills and report.filled_quantity == 0, (lean, report)
    live.sim.fills.append(VenueFill(trade_id="t1", quantity=Decimal("0.04"), price=Decimal("1000"),
                                    at=datetime.now(timezone.utc)))
    for lean, without_fills, with_fills in LEAN_WIRE_ROWS:
        live.lean_status = lean
        report = await venue.fetch(ref(request))
        assert report.status == with_fills, (lean, report)
        assert report.filled_quantity == Decimal("0.04") and len(report.fills) == 1, (lean, report)
    live.lean_status, live.sim.fills[:] = 3, [live.sim.fills[0].model_copy(update={"quantity": Decimal("0.1")})]
    assert (await venue.fetch(ref(request))).status == _S.FILLED  # Filled with all its fills
