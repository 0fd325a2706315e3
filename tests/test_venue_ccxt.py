"""The direct-venue adapter: the real ccxt client over HTTP against `tom exchange-emulator`
processes, for Binance and Bybit. Idempotent submission under lost answers, reconciliation,
cancel/amend, error classification, the shared gate's pause and breaker as the venue sees them."""
import asyncio
import socket
from decimal import Decimal

import pytest
import pytest_asyncio

from activities.venues.ccxt_exchange import CcxtVenue, build_ccxt_adapters
from activities.venues.gate import gate_status
from activities.venues import VenueError
from oms.markets import simulated_market
from oms.models import OrderType, Side, TimeInForce
from oms.venue import VenueAmendRequest, VenueErrorType, VenueOrderRef, VenueOrderRequest, VenueOrderStatus
from tests.conftest import direct_settings

VENUES = ("binance", "bybit")
SYMBOL = "ETH/USDT"


@pytest.fixture(params=VENUES)
def venue_name(request) -> str:
    return request.param


@pytest_asyncio.fixture
async def adapter(venue_name, fast_settings, emulators, redis) -> CcxtVenue:
    settings = direct_settings(fast_settings, emulators, (venue_name,), orders={"rate_limit_orders": 1000},
                               timeout_ms=1500, recv_window_ms=1000)
    (venue,) = build_ccxt_adapters(settings, redis)
    yield venue
    await venue.close()


def request(venue: CcxtVenue, cid: str, price: Decimal | None = None, quantity: str = "0.01",
            tif: TimeInForce = TimeInForce.GTC, side: Side = Side.BUY) -> VenueOrderRequest:
    return VenueOrderRequest(exchange=venue.name, client_order_id=cid, symbol=SYMBOL, side=side,
                             order_type=OrderType.LIMIT, quantity=Decimal(quantity), limit_price=price,
                             time_in_force=tif)


def ref(venue: CcxtVenue, cid: str) -> VenueOrderRef:
    return VenueOrderRef(exchange=venue.name, client_order_id=cid, symbol=SYMBOL)


async def prices(venue: CcxtVenue) -> tuple[Decimal, Decimal]:
    """(a resting buy price well below the market, a buy price that crosses it)."""
    quote = await venue.quote(SYMBOL)
    step = quote.market.price_step
    return ((quote.bid * Decimal("0.97")) // step * step, (quote.ask * Decimal("1.01")) // step * step)


def placed(emulator, cid: str) -> int:
    return sum(1 for order in emulator.orders() if order["client_order_id"] == cid)


async def test_markets_and_quotes_come_from_the_venue(adapter):
    market = await adapter.market(SYMBOL)
    expected = simulated_market(SYMBOL)
    assert (market.amount_step, market.price_step, market.min_amount, market.min_notional) == (
        expected.amount_step, expected.price_step, expected.min_amount, expected.min_notional)
    quote = await adapter.quote(SYMBOL)
    assert Decimal(0) < quote.bid < quote.ask
    assert adapter.estimate_slippage_bps(SYMBOL, Side.BUY, Decimal("0.01")) > 0
    with pytest.raises(VenueError) as unknown:
        await adapter.market("NOPE/USDT")
    assert unknown.value.kind == VenueErrorType.REJECTED


async def test_resting_order_listed_then_cancelled(adapter, emulators):
    rest, _ = await prices(adapter)
    report = await adapter.submit(request(adapter, "rest-1", rest))
    assert report.status == VenueOrderStatus.NEW and report.venue_order_id
    assert (await adapter.fetch(ref(adapter, "rest-1"))).status == VenueOrderStatus.NEW
    listed = {r.client_order_id: r for r in await adapter.fetch_open("default")}
    assert listed["rest-1"].fills_complete is False and listed["rest-1"].status == VenueOrderStatus.NEW
    cancelled = await adapter.cancel(ref(adapter, "rest-1"))
    assert cancelled.status == VenueOrderStatus.CANCELLED
    assert "rest-1" not in {r.client_order_id for r in await adapter.fetch_open("default")}
    assert placed(emulators[adapter.name], "rest-1") == 1


async def test_crossing_order_fills_with_trades_and_a_cancel_after_the_fill_returns_it(adapter, emulators):
    _, cross = await prices(adapter)
    report = await adapter.submit(request(adapter, "fill-1", cross))
    assert report.status == VenueOrderStatus.FILLED and report.fills_complete
    assert sum(f.quantity for f in report.fills) == Decimal("0.01")
    assert all(f.fee > 0 and f.fee_currency and f.trade_id for f in report.fills)
    again = await adapter.fetch(ref(adapter, "fill-1"))
    assert [f.trade_id for f in again.fills] == [f.trade_id for f in report.fills]  # stable fill ids
    after = await adapter.cancel(ref(adapter, "fill-1"))  # the cancel lost the race: the fills stand
    assert after.status == VenueOrderStatus.FILLED and len(after.fills) == len(report.fills)


@pytest.mark.parametrize("fault", ["drop_after_accept", "timeout_after_accept", "server_error_after"])
async def test_lost_answer_is_unknown_and_a_retry_finds_the_one_order(adapter, emulators, fault):
    """The order was placed but its answer lost: UNKNOWN_OUTCOME, and submitting again (a retry, a
    restarted worker) looks it up instead of placing a second one, even after it has filled."""
    emulator = emulators[adapter.name]
    _, cross = await prices(adapter)
    emulator.fault(kind=fault, endpoints=["create"], delay_ms=5000)
    with pytest.raises(VenueError) as lost:
        await adapter.submit(request(adapter, f"lost-{fault}", cross))
    assert lost.value.kind == VenueErrorType.UNKNOWN_OUTCOME
    report = await adapter.submit(request(adapter, f"lost-{fault}", cross))
    assert report.status == VenueOrderStatus.FILLED
    assert placed(emulator, f"lost-{fault}") == 1 and emulator.stats()["duplicate_client_order_ids"] == []


async def test_order_not_found_is_resent_only_after_its_receive_window(adapter, emulators):
    """A 503 before processing looks like any lost answer; the venue says "not found", but the first
    request could still arrive until its receive window (1 s here) has passed."""
    emulator = emulators[adapter.name]
    rest, _ = await prices(adapter)
    emulator.fault(kind="server_error", endpoints=["create"])
    with pytest.raises(VenueError) as first:
        await adapter.submit(request(adapter, "nf-1", rest))
    assert first.value.kind == VenueErrorType.UNKNOWN_OUTCOME
    with pytest.raises(VenueError) as early:
        await adapter.submit(request(adapter, "nf-1", rest))
    assert early.value.kind == VenueErrorType.UNKNOWN_OUTCOME and "receive window" in str(early.value)
    assert placed(emulator, "nf-1") == 0
    await asyncio.sleep(2.1)  # recv window 1 s + clock margin 1 s
    report = await adapter.submit(request(adapter, "nf-1", rest))
    assert report.status == VenueOrderStatus.NEW and placed(emulator, "nf-1") == 1


async def test_rejections_are_final_and_fetch_of_a_stranger_is_not_found(adapter, emulators):
    emulator = emulators[adapter.name]
    rest, _ = await prices(adapter)
    emulator.fault(kind="reject", endpoints=["create"])
    with pytest.raises(VenueError) as refused:
        await adapter.submit(request(adapter, "rej-1", rest))
    assert refused.value.kind == VenueErrorType.REJECTED
    assert (await adapter.fetch(ref(adapter, "never-sent"))).status == VenueOrderStatus.NOT_FOUND
    with pytest.raises(VenueError) as missing:
        await adapter.cancel(ref(adapter, "never-sent"))
    assert missing.value.kind == VenueErrorType.NOT_FOUND


async def test_duplicate_client_id_at_the_venue_means_already_placed(adapter, emulators, redis):
    """Another worker placed it and its mark was lost: the venue's duplicate refusal is an answer."""
    rest, _ = await prices(adapter)
    first = await adapter.submit(request(adapter, "dup-1", rest))
    await redis.delete(f"venue:{adapter.name}:default:sent:dup-1")
    again = await adapter.submit(request(adapter, "dup-1", rest))
    assert again.venue_order_id == first.venue_order_id and placed(emulators[adapter.name], "dup-1") == 1


async def test_amend_is_native_on_bybit_and_cancel_and_replace_on_binance(adapter, emulators):
    rest, _ = await prices(adapter)
    await adapter.submit(request(adapter, "am-1", rest))
    step = (await adapter.market(SYMBOL)).price_step
    amend = VenueAmendRequest(exchange=adapter.name, client_order_id="am-1", symbol=SYMBOL,
                              quantity=Decimal("0.02"), limit_price=rest - step)
    if adapter.name == "binance":
        with pytest.raises(VenueError) as unsupported:
            await adapter.amend(amend)
        assert unsupported.value.kind == VenueErrorType.UNSUPPORTED
        return
    report = await adapter.amend(amend)
    assert (report.quantity, report.limit_price) == (Decimal("0.02"), rest - step)
    await adapter.cancel(ref(adapter, "am-1"))
    with pytest.raises(VenueError) as closed:
        await adapter.amend(amend)
    assert closed.value.kind == VenueErrorType.REJECTED


async def test_rate_limit_answer_pauses_the_account_for_everyone(adapter, emulators, redis):
    emulator = emulators[adapter.name]
    rest, _ = await prices(adapter)
    emulator.fault(kind="rate_limit", endpoints=["create"], retry_after_s=2)
    with pytest.raises(VenueError) as limited:
        await adapter.submit(request(adapter, "rl-1", rest))
    assert limited.value.kind == VenueErrorType.RATE_LIMITED
    status = await gate_status(redis, adapter.name, "default")
    assert 0 < status["paused_for_s"] <= 2 and status["pauses"] == 1
    requests_before = emulator.stats()["requests"]
    with pytest.raises(VenueError) as paused:  # not sent at all while paused
        await adapter.submit(request(adapter, "rl-1", rest))
    assert paused.value.kind == VenueErrorType.RATE_LIMITED and 0 < paused.value.retry_after_s <= 2
    assert emulator.stats()["requests"] == requests_before
    await asyncio.sleep(paused.value.retry_after_s + 0.05)
    assert (await adapter.submit(request(adapter, "rl-1", rest))).status == VenueOrderStatus.NEW
    assert placed(emulator, "rl-1") == 1


async def test_breaker_opens_on_repeated_failures_holds_then_a_probe_closes_it(venue_name, fast_settings,
                                                                              emulators, redis):
    emulator = emulators[venue_name]
    breaker = {"failure_threshold": 3, "open_seconds": 1.0, "on_open": "wait"}
    settings = direct_settings(fast_settings, emulators, (venue_name,), direct={"circuit_breaker": breaker},
                               timeout_ms=1500)
    (adapter,) = build_ccxt_adapters(settings, redis)
    try:
        await adapter.market(SYMBOL)
        emulator.fault(kind="server_error", endpoints=["query"], rate=1.0)
        for _ in range(3):
            with pytest.raises(VenueError) as failing:
                await adapter.fetch(ref(adapter, "x"))
            assert failing.value.kind == VenueErrorType.TRANSIENT
        assert await adapter.circuit_open()
        seen = emulator.stats()["requests"]
        with pytest.raises(VenueError) as held:
            await adapter.fetch(ref(adapter, "x"))
        assert held.value.kind == VenueErrorType.CIRCUIT_OPEN and emulator.stats()["requests"] == seen
        await asyncio.sleep(1.05)
        with pytest.raises(VenueError):  # the half-open probe reaches the venue, fails: open again
            await adapter.fetch(ref(adapter, "x"))
        assert emulator.stats()["requests"] == seen + 1 and await adapter.circuit_open()
        emulator.clear_faults()
        await asyncio.sleep(1.05)
        assert (await adapter.fetch(ref(adapter, "x"))).status == VenueOrderStatus.NOT_FOUND  # probe succeeds
        status = await gate_status(redis, venue_name, "default")
        assert status["circuit"] == "closed" and status["opened"] == 2
    finally:
        await adapter.close()


async def test_unreachable_venue_is_transient_and_leaves_no_mark(fast_settings, emulators, redis):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]  # bound, not listening: connections are refused
        (adapter,) = build_ccxt_adapters(direct_settings(fast_settings, emulators, ("binance",)), redis)
        try:
            await adapter.market(SYMBOL)  # markets loaded while reachable
            adapter.client.urls["api"] = adapter.dialect.rewrite_urls(adapter.client.urls["api"],
                                                                      f"http://127.0.0.1:{dead}")
            with pytest.raises(VenueError) as refused:
                await adapter.submit(request(adapter, "unreach-1", Decimal("1000.00")))
            assert refused.value.kind == VenueErrorType.TRANSIENT
            assert not await redis.exists("venue:binance:default:sent:unreach-1")
        finally:
            await adapter.close()
