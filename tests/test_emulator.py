"""The exchange emulator as its users see it: `tom exchange-emulator` subprocesses (one per venue)
driven by the real ccxt async clients, plus the admin API our adapter tests rely on."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any

import ccxt.async_support as ccxt
import httpx
import pytest
import pytest_asyncio

from config.settings import load_settings
from oms import venue_model
from oms.markets import SIMULATED_SYMBOLS
from tests.conftest import REPO
from tests.emulators import Emulator, running_emulators
from emulator.book import utc_now
from emulator.traffic import max_in_window

VENUES = ("binance", "bybit")
SYMBOL = "BTC/USDT"
CONFIG = REPO / "config" / "local.yaml"
SIM = load_settings(CONFIG, env={}).execution.simulation  # what the emulator processes load
SECRET = "emulator-secret"


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Emulator]]:
    with running_emulators(tmp_path_factory.mktemp("emulator"), VENUES) as running:
        yield running


@pytest.fixture(params=VENUES)
def emulator(request: pytest.FixtureRequest, emulators: dict[str, Emulator]) -> Emulator:
    emu = emulators[request.param]
    emu.admin("POST", "reset")
    return emu


def client(emu: Emulator, secret: str = SECRET, timeout_ms: int = 10_000, recv_window: int = 5000,
           api_key: str = "emulator-key") -> ccxt.Exchange:
    """The real ccxt client of the venue, pointed at the emulator."""
    # The emulator enforces no rate limit (faults inject them), so ccxt's throttle only slows tests;
    # timeout_on_exit is a grace for TLS shutdown, which plain HTTP does not need.
    config: dict[str, Any] = {"apiKey": api_key, "secret": secret, "timeout": timeout_ms,
                              "enableRateLimit": False, "timeout_on_exit": 0}
    if emu.venue == "binance":
        exchange = ccxt.binance({**config, "options": {
            "defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
            "fetchMargins": False, "recvWindow": recv_window, "warnOnFetchOpenOrdersWithoutSymbol": False}})
        exchange.urls["api"] = {**exchange.urls["api"], "public": f"{emu.url}/api/v3", "private": f"{emu.url}/api/v3"}
    else:
        exchange = ccxt.bybit({**config, "options": {
            "defaultType": "spot", "fetchMarkets": {"types": ["spot"]}, "recvWindow": recv_window,
            "enableUnifiedAccount": True, "enableUnifiedMargin": False}})
        exchange.urls["api"] = {name: emu.url for name in exchange.urls["api"]}
    return exchange


@pytest_asyncio.fixture
async def exchange(emulator: Emulator) -> AsyncIterator[ccxt.Exchange]:
    ex = client(emulator)
    await ex.load_markets()
    yield ex
    await ex.close()


async def fetch_by_client_id(ex: ccxt.Exchange, cid: str) -> Any:
    if ex.id == "binance":
        return await ex.fetch_order(None, SYMBOL, {"origClientOrderId": cid})
    # Bybit: /v5/order/realtime by orderLinkId answers whatever the order's status.
    return await ex.fetch_order("", SYMBOL, {"acknowledged": True, "orderLinkId": cid})


async def resting_buy(ex: ccxt.Exchange, cid: str, amount: float = 0.001) -> Any:
    book = await ex.fetch_order_book(SYMBOL, 5)
    return await ex.create_order(SYMBOL, "limit", "buy", amount, round(book["bids"][0][0] * 0.98, 2),
                                 {"clientOrderId": cid})


async def crossing_buy(ex: ccxt.Exchange, cid: str, amount: float = 0.001) -> Any:
    book = await ex.fetch_order_book(SYMBOL, 5)
    return await ex.create_order(SYMBOL, "limit", "buy", amount, round(book["asks"][0][0] * 1.01, 2),
                                 {"clientOrderId": cid})


# -- markets ---------------------------------------------------------------------------------------

async def test_markets_carry_precision_and_limits(exchange: ccxt.Exchange) -> None:
    assert set(SIMULATED_SYMBOLS) <= set(exchange.markets)
    btc = exchange.market(SYMBOL)
    assert btc["spot"] and btc["active"] and btc["id"] == "BTCUSDT"
    assert btc["precision"]["amount"] == 0.00001 and btc["precision"]["price"] == 0.01
    assert btc["limits"]["amount"]["min"] == 0.00001 and btc["limits"]["cost"]["min"] == 5
    assert exchange.market("DOGE/USDT")["precision"]["price"] == 0.00001


async def test_order_book_follows_the_simulation_price_path(exchange: ccxt.Exchange) -> None:
    book = await exchange.fetch_order_book(SYMBOL, 5)
    bid, ask = venue_model.top_of_book(SYMBOL, utc_now(), SIM)
    assert len(book["bids"]) == len(book["asks"]) == 5
    assert book["bids"][0][0] < book["asks"][0][0]
    assert abs(Decimal(str(book["bids"][0][0])) - bid) / bid < Decimal("0.0001")  # same path, ms apart
    assert abs(Decimal(str(book["asks"][0][0])) - ask) / ask < Decimal("0.0001")


# -- orders ----------------------------------------------------------------------------------------

async def test_resting_order_found_by_client_id_listed_and_cancelled(exchange: ccxt.Exchange) -> None:
    placed = await resting_buy(exchange, "rest-1")
    found = await fetch_by_client_id(exchange, "rest-1")
    assert found["id"] == placed["id"] and found["clientOrderId"] == "rest-1" and found["status"] == "open"
    assert [o["id"] for o in await exchange.fetch_open_orders(SYMBOL)] == [placed["id"]]
    by_client_id = {"origClientOrderId": "rest-1"} if exchange.id == "binance" else {"orderLinkId": "rest-1"}
    await exchange.cancel_order(None, SYMBOL, by_client_id)
    assert await exchange.fetch_open_orders(SYMBOL) == []
    assert (await fetch_by_client_id(exchange, "rest-1"))["status"] == "canceled"


async def test_bybit_queries_by_link_id_include_closed_orders(emulators: dict[str, Emulator]) -> None:
    emulators["bybit"].admin("POST", "reset")
    ex = client(emulators["bybit"])
    try:
        placed = await crossing_buy(ex, "link-1")
        [found] = await ex.fetch_open_orders(SYMBOL, params={"orderLinkId": "link-1"})  # /v5/order/realtime
        assert found["id"] == placed["id"] and found["status"] == "closed"
        request = {"category": "spot", "symbol": "BTCUSDT", "orderLinkId": "link-1"}
        [row] = (await ex.private_get_v5_order_history(request))["result"]["list"]
        assert row["orderId"] == placed["id"] and row["orderStatus"] == "Filled"
        assert await ex.fetch_open_orders(SYMBOL) == []  # without an id: open orders only
    finally:
        await ex.close()


async def test_bybit_open_orders_page_by_cursor(emulators: dict[str, Emulator]) -> None:
    emulators["bybit"].admin("POST", "reset")
    ex = client(emulators["bybit"])
    try:
        ids = [(await resting_buy(ex, f"page-{i}"))["id"] for i in range(3)]
        seen, cursor = [], ""
        while True:
            request = {"category": "spot", "limit": 2, **({"cursor": cursor} if cursor else {})}
            result = (await ex.private_get_v5_order_realtime(request))["result"]
            seen += [row["orderId"] for row in result["list"]]
            cursor = result["nextPageCursor"]
            if not cursor:
                break
        assert seen == ids[::-1]  # newest first, each once
    finally:
        await ex.close()


async def test_crossing_limit_order_fills_at_once_as_taker(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    placed = await crossing_buy(exchange, "cross-1", amount=0.002)
    order = await fetch_by_client_id(exchange, "cross-1")
    assert order["status"] == "closed" and order["filled"] == 0.002
    [trade] = await exchange.fetch_my_trades(SYMBOL)
    assert trade["order"] == placed["id"] and trade["side"] == "buy" and trade["takerOrMaker"] == "taker"
    assert trade["amount"] == 0.002
    assert trade["fee"]["currency"] == "BTC"  # a buy pays its fee in the asset it receives
    assert Decimal(str(trade["fee"]["cost"])) == Decimal("0.002") * Decimal(str(SIM.taker_fee))
    [record] = emulator.orders()
    assert record["client_order_id"] == "cross-1" and record["status"] == "filled"
    assert record["fills"][0]["maker"] is False and record["fills"][0]["fee_asset"] == "BTC"


def _tick(value: Decimal, rounding: str) -> Decimal:
    return (value / Decimal("0.01")).to_integral_value(rounding) * Decimal("0.01")


def maker_order() -> tuple[str, Decimal, float]:
    """A (side, price, seconds) that rests now and which the price path reaches within seconds.

    The path is deterministic, so the test can foresee it: the fill happens when the venue
    advances the order second by second, exactly as our simulation adapter would.
    """
    now = utc_now()
    bid, ask = venue_model.top_of_book(SYMBOL, now, SIM)
    # At a turning point of the path (about 1 % of instants) it stays within 0.10 for more than
    # 3 s; it never does for 6 (a sum of sines of periods 60 s and longer), so look that far ahead.
    for k in range(1, 11):
        later_bid, later_ask = venue_model.top_of_book(SYMBOL, now + timedelta(seconds=k), SIM)
        buy = _tick(later_ask, ROUND_UP) + Decimal("0.02")
        if buy < ask - Decimal("0.10"):
            return "buy", buy, k
        sell = _tick(later_bid, ROUND_DOWN) - Decimal("0.02")
        if sell > bid + Decimal("0.10"):
            return "sell", sell, k
    raise AssertionError("the price path moved less than 0.10 in 10 s: the venue model changed")


async def test_resting_order_fills_as_maker_when_the_path_crosses(exchange: ccxt.Exchange) -> None:
    side, price, seconds = maker_order()
    placed = await exchange.create_order(SYMBOL, "limit", side, 0.001, float(price), {"clientOrderId": "mk-1"})
    assert placed["id"]
    time.sleep(seconds + 1.2)  # the order is advanced when it is next read
    order = await fetch_by_client_id(exchange, "mk-1")
    assert order["status"] == "closed" and order["filled"] == 0.001
    [trade] = await exchange.fetch_my_trades(SYMBOL)
    assert trade["takerOrMaker"] == "maker" and trade["price"] == float(price)
    rate = Decimal(str(SIM.maker_fee))
    expected = Decimal("0.001") * rate if side == "buy" else (Decimal("0.001") * price * rate).quantize(
        Decimal("0.00000001"))
    assert Decimal(str(trade["fee"]["cost"])) == expected


async def test_trade_through_fills_a_resting_order_now_as_maker(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    """The scripted crossing tests use instead of waiting for the price path: the whole remainder
    fills at the limit price as maker; a closed or unknown order is refused."""
    await resting_buy(exchange, "tt-1")
    resting = await fetch_by_client_id(exchange, "tt-1")
    assert resting["status"] == "open" and resting["filled"] == 0
    filled = emulator.trade_through("tt-1")
    assert filled["status"] == "filled" and Decimal(filled["filled"]) == Decimal("0.001")
    order = await fetch_by_client_id(exchange, "tt-1")
    assert order["status"] == "closed" and order["filled"] == 0.001
    [trade] = await exchange.fetch_my_trades(SYMBOL)
    assert trade["takerOrMaker"] == "maker" and trade["price"] == resting["price"]
    again = httpx.post(f"{emulator.url}/_emulator/trade-through", json={"client_order_id": "tt-1"})
    assert again.status_code == 409 and again.json()["error"] == "order_closed"
    unknown = httpx.post(f"{emulator.url}/_emulator/trade-through", json={"client_order_id": "nope"})
    assert unknown.status_code == 409
    assert httpx.post(f"{emulator.url}/_emulator/trade-through", json=["tt-1"]).status_code == 400


async def test_cancel_of_a_filled_order_is_order_not_found(exchange: ccxt.Exchange) -> None:
    placed = await crossing_buy(exchange, "filled-1")
    with pytest.raises(ccxt.OrderNotFound):  # binance -2011, bybit 110001
        await exchange.cancel_order(placed["id"], SYMBOL)


async def test_unknown_order_is_order_not_found(exchange: ccxt.Exchange) -> None:
    with pytest.raises(ccxt.OrderNotFound):
        if exchange.id == "binance":
            await exchange.fetch_order("12345", SYMBOL)  # -2013
        else:
            await exchange.cancel_order("12345", SYMBOL)  # 110001


async def test_market_order_and_balances(exchange: ccxt.Exchange) -> None:
    before = await exchange.fetch_balance()
    await exchange.create_order(SYMBOL, "market", "sell", 0.01)
    after = await exchange.fetch_balance()
    assert after["BTC"]["total"] == pytest.approx(before["BTC"]["total"] - 0.01)
    assert after["USDT"]["total"] > before["USDT"]["total"] + 500
    await resting_buy(exchange, "lock-1", amount=0.01)
    locked = await exchange.fetch_balance()
    assert locked["USDT"]["used"] > 500 and locked["USDT"]["free"] < after["USDT"]["free"]


async def test_filter_failures_and_insufficient_balance(exchange: ccxt.Exchange) -> None:
    market_id = exchange.market(SYMBOL)["id"]
    raw: dict[str, Any] = ({"symbol": market_id, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                            "quantity": "0.001", "price": "100.001"} if exchange.id == "binance" else
                           {"category": "spot", "symbol": market_id, "side": "Buy", "orderType": "Limit",
                            "qty": "0.001", "price": "100.001"})
    send = exchange.privatePostOrder if exchange.id == "binance" else exchange.privatePostV5OrderCreate
    with pytest.raises(ccxt.InvalidOrder):  # binance "Filter failure: PRICE_FILTER", bybit 170134
        await send(raw)
    with pytest.raises(ccxt.InsufficientFunds):  # binance -2010, bybit 170131
        await exchange.create_order(SYMBOL, "limit", "buy", 90, 50_000)


async def test_bybit_native_amend(emulators: dict[str, Emulator]) -> None:
    emulators["bybit"].admin("POST", "reset")
    ex = client(emulators["bybit"])
    try:
        placed = await resting_buy(ex, "amend-1")
        price = round((await fetch_by_client_id(ex, "amend-1"))["price"] - 10, 2)
        await ex.edit_order(placed["id"], SYMBOL, "limit", "buy", 0.002, price)
        amended = await fetch_by_client_id(ex, "amend-1")
        assert amended["id"] == placed["id"] and amended["amount"] == 0.002 and amended["price"] == price
        # The implicit endpoint, by client id.
        await ex.privatePostV5OrderAmend({"category": "spot", "symbol": "BTCUSDT", "orderLinkId": "amend-1",
                                          "qty": "0.003"})
        assert (await fetch_by_client_id(ex, "amend-1"))["amount"] == 0.003
        await ex.cancel_order(placed["id"], SYMBOL)
        with pytest.raises(ccxt.OrderNotFound):  # 110001: no longer open
            await ex.edit_order(placed["id"], SYMBOL, "limit", "buy", 0.004, price)
        assert emulators["bybit"].stats()["by_class"]["amend"] == 3
    finally:
        await ex.close()


async def test_binance_edit_order_is_cancel_replace(emulators: dict[str, Emulator]) -> None:
    emulators["binance"].admin("POST", "reset")
    ex = client(emulators["binance"])
    try:
        placed = await resting_buy(ex, "repl-1")
        replaced = await ex.edit_order(placed["id"], SYMBOL, "limit", "buy", 0.002, placed["price"],
                                       {"clientOrderId": "repl-2"})
        assert replaced["id"] != placed["id"] and replaced["clientOrderId"] == "repl-2"
        assert (await fetch_by_client_id(ex, "repl-1"))["status"] == "canceled"
        assert [o["clientOrderId"] for o in await ex.fetch_open_orders(SYMBOL)] == ["repl-2"]
    finally:
        await ex.close()


async def test_duplicate_client_ids(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    placed = await resting_buy(exchange, "dup-1")
    with pytest.raises(ccxt.InvalidOrder):  # binance -2010 "Duplicate order sent.", bybit 110072
        await resting_buy(exchange, "dup-1")
    await exchange.cancel_order(placed["id"], SYMBOL)
    if exchange.id == "binance":  # reuse after the first order closed is a new order, as on Binance
        await resting_buy(exchange, "dup-1")
        stats = emulator.stats()
        assert stats["duplicate_client_order_ids"] == ["dup-1"] and stats["orders_placed"] == 2
        assert stats["rejected_duplicates"] == 1
    else:  # Bybit never accepts an orderLinkId twice
        with pytest.raises(ccxt.InvalidOrder):
            await resting_buy(exchange, "dup-1")
        stats = emulator.stats()
        assert stats["duplicate_client_order_ids"] == [] and stats["rejected_duplicates"] == 2


async def test_client_id_format_is_checked(emulators: dict[str, Emulator]) -> None:
    emulators["binance"].admin("POST", "reset")
    ex = client(emulators["binance"])
    try:
        with pytest.raises(ccxt.BadRequest):  # -1100 illegal characters
            await resting_buy(ex, "x" * 37)
        # Binance allows '.', ':' and '/', which travel percent-encoded: signatures cover the encoded form.
        await resting_buy(ex, "a.b:c/d")
        assert (await fetch_by_client_id(ex, "a.b:c/d"))["clientOrderId"] == "a.b:c/d"
    finally:
        await ex.close()


# -- authentication --------------------------------------------------------------------------------

async def test_wrong_secret_or_key_is_authentication_error(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    for bad in (client(emulator, secret="not-the-secret"), client(emulator, api_key="not-the-key")):
        try:
            if emulator.venue == "bybit":  # with credentials, ccxt loads Bybit's coins (signed) with the markets
                with pytest.raises(ccxt.AuthenticationError):
                    await bad.load_markets()
            bad.set_markets(list(exchange.markets.values()))
            with pytest.raises(ccxt.AuthenticationError):
                await bad.fetch_balance()
            with pytest.raises(ccxt.AuthenticationError):
                await bad.create_order(SYMBOL, "limit", "buy", 0.001, 50_000)
        finally:
            await bad.close()
    assert emulator.orders() == []


async def test_stale_timestamp_is_invalid_nonce(emulator: Emulator) -> None:
    ex = client(emulator, recv_window=1000)
    ex.options["timeDifference"] = 3000  # our clock 3 s behind the venue's
    try:
        with pytest.raises(ccxt.InvalidNonce):  # binance -1021, bybit 10002
            await ex.fetch_balance()
    finally:
        await ex.close()


# -- faults ----------------------------------------------------------------------------------------

RATE_LIMITED = {"binance": ccxt.DDoSProtection, "bybit": ccxt.RateLimitExceeded}


async def test_rate_limit_fault(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    emulator.fault(kind="rate_limit", retry_after_s=3)
    with pytest.raises(RATE_LIMITED[emulator.venue]) as raised:  # binance 429 -1003, bybit retCode 10006
        await resting_buy(exchange, "rl-1")
    assert raised.type is RATE_LIMITED[emulator.venue]  # the two are siblings, not parent and child
    headers = {k.lower(): v for k, v in exchange.last_response_headers.items()}
    if emulator.venue == "binance":
        assert headers["retry-after"] == "3"
    else:
        assert headers["x-bapi-limit-status"] == "0"
        assert int(headers["x-bapi-limit-reset-timestamp"]) > time.time() * 1000 + 2000
    assert emulator.orders() == []
    await resting_buy(exchange, "rl-1")  # one-shot: the next one goes through
    stats = emulator.stats()
    assert stats["rate_limited"] == 1 and stats["orders_placed"] == 1


async def test_ban_refuses_everything_until_it_ends(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    emulator.fault(kind="ban", ban_s=1.5)
    with pytest.raises(RATE_LIMITED[emulator.venue]) as raised:  # binance 418 -1003, bybit HTTP 403
        await resting_buy(exchange, "ban-1")
    assert raised.type is RATE_LIMITED[emulator.venue]
    for call in (exchange.fetch_balance(), exchange.fetch_order_book(SYMBOL), exchange.fetch_open_orders(SYMBOL)):
        with pytest.raises(RATE_LIMITED[emulator.venue]):
            await call
    time.sleep(1.6)
    await resting_buy(exchange, "ban-2")
    stats = emulator.stats()
    # the resting_buy after the ban fetched the book too; the one that triggered it did not get that far
    assert stats["requests_during_ban"] == 3 and len(stats["bans"]) == 1
    start, end = stats["bans"][0]
    assert end - start == 1500
    assert [o["client_order_id"] for o in emulator.orders()] == ["ban-2"]


@pytest.mark.parametrize(("status", "error"), [(503, ccxt.ExchangeNotAvailable), (504, ccxt.RequestTimeout)])
async def test_server_error_before_processing(exchange: ccxt.Exchange, emulator: Emulator, status: int,
                                              error: type[Exception]) -> None:
    emulator.fault(kind="server_error", status=status)
    with pytest.raises(error) as raised:
        await resting_buy(exchange, "se-1")
    assert raised.type is error
    assert emulator.orders() == []


@pytest.mark.parametrize("kind", ["server_error_after", "drop_after_accept"])
async def test_faults_after_the_order_was_placed(exchange: ccxt.Exchange, emulator: Emulator, kind: str) -> None:
    emulator.fault(kind=kind)
    with pytest.raises(ccxt.ExchangeNotAvailable) as raised:  # a 503 or a closed connection: outcome unknown
        await resting_buy(exchange, "after-1")
    assert raised.type is ccxt.ExchangeNotAvailable
    [order] = emulator.orders()
    assert order["client_order_id"] == "after-1" and order["status"] == "new"
    assert (await fetch_by_client_id(exchange, "after-1"))["status"] == "open"  # reconciliation finds it


async def test_dropped_binance_cancel_is_resent_and_answers_unknown_order(emulators: dict[str, Emulator]) -> None:
    """aiohttp resends a DELETE whose connection dropped: the resend finds the order already
    cancelled (by the first one) and ccxt raises OrderNotFound for a cancel that worked."""
    emu = emulators["binance"]
    emu.admin("POST", "reset")
    ex = client(emu)
    try:
        placed = await resting_buy(ex, "drop-c1")
        emu.fault(kind="drop_after_accept", endpoints=["cancel"])
        with pytest.raises(ccxt.OrderNotFound):
            await ex.cancel_order(placed["id"], SYMBOL)
        assert emu.orders()[0]["status"] == "cancelled"
        assert [e[2] for e in emu.stats(log=True)["request_log"] if e[1] == "cancel"] == [0, 400]
    finally:
        await ex.close()


async def test_timeout_after_accept(emulator: Emulator) -> None:
    ex = client(emulator, timeout_ms=1000)
    try:
        await ex.load_markets()
        emulator.fault(kind="timeout_after_accept", delay_ms=5000)
        started = time.monotonic()
        with pytest.raises(ccxt.RequestTimeout) as raised:
            await resting_buy(ex, "to-1")
        # The answer was held 5 s and the client gave up at its 1 s timeout: a RequestTimeout (an
        # answer would have been a success) at no less than that timeout; no upper bound on load.
        assert raised.type is ccxt.RequestTimeout and time.monotonic() - started >= 0.9
        assert [o["client_order_id"] for o in emulator.orders()] == ["to-1"]
    finally:
        await ex.close()


async def test_slow_fault_checks_the_recv_window_after_the_wait(emulator: Emulator) -> None:
    # A 3 s window: the fast request keeps 2.8 s of slack for a loaded machine.
    ex = client(emulator, recv_window=3000)
    try:
        await ex.load_markets()
        emulator.fault(kind="slow", delay_ms=3200)
        with pytest.raises(ccxt.InvalidNonce) as raised:  # stale by the time it is processed
            await resting_buy(ex, "slow-1")
        assert raised.type is ccxt.InvalidNonce
        emulator.fault(kind="slow", delay_ms=200)
        await resting_buy(ex, "slow-2")
        assert [o["client_order_id"] for o in emulator.orders()] == ["slow-2"]
    finally:
        await ex.close()


async def test_reject_fault_is_insufficient_funds(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    emulator.fault(kind="reject")
    with pytest.raises(ccxt.InsufficientFunds) as raised:
        await resting_buy(exchange, "rej-1")
    assert raised.type is ccxt.InsufficientFunds
    assert emulator.orders() == []


async def test_rate_fault_and_endpoint_selection(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    emulator.fault(kind="server_error", rate=1.0, endpoints=["cancel"])
    placed = await resting_buy(exchange, "sel-1")  # creates are not affected
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await exchange.cancel_order(placed["id"], SYMBOL)
    with pytest.raises(ccxt.ExchangeNotAvailable):  # a rate fault keeps firing
        await exchange.cancel_order(placed["id"], SYMBOL)
    emulator.admin("DELETE", "faults")
    await exchange.cancel_order(placed["id"], SYMBOL)


def test_admin_rejects_a_bad_fault(emulators: dict[str, Emulator]) -> None:
    response = httpx.post(f"{emulators['binance'].url}/_emulator/faults", json={"kind": "meteor"})
    assert response.status_code == 400 and "kind" in response.json()["error"]


# -- statistics ------------------------------------------------------------------------------------

async def test_max_orders_in_window(exchange: ccxt.Exchange, emulator: Emulator) -> None:
    book = await exchange.fetch_order_book(SYMBOL, 5)
    price = round(book["bids"][0][0] * 0.98, 2)
    for i in range(5):
        await exchange.create_order(SYMBOL, "limit", "buy", 0.001, price, {"clientOrderId": f"w-a{i}"})
    time.sleep(0.7)
    for i in range(3):
        await exchange.create_order(SYMBOL, "limit", "buy", 0.001, price, {"clientOrderId": f"w-b{i}"})
    if exchange.id == "binance":
        assert exchange.last_response_headers["X-MBX-ORDER-COUNT-10S"] == "8"
    stats = emulator.stats(window_ms=500, log=True)
    assert stats["orders_placed"] == 8 and stats["max_orders_in_window"] == 5
    assert stats["max_requests_in_window"] >= 5
    assert emulator.stats(window_ms=10_000)["max_orders_in_window"] == 8
    creates = [entry for entry in stats["request_log"] if entry[1] == "create"]
    assert len(creates) == 8 and all(entry[2] == 200 for entry in creates)
    assert creates[5][0] - creates[4][0] >= 700  # monotonic ms, comparable with this process's clock
    assert stats["by_endpoint"]


def test_max_in_window_is_an_exact_sliding_window() -> None:
    assert max_in_window([], 1) == 0
    assert max_in_window([0.0, 0.1, 0.2, 0.5, 0.55], 0.5) == 4  # 0.1 .. 0.55
    assert max_in_window([0.0, 0.5, 1.0], 0.5) == 1  # half-open: 0.5 apart is two windows
    assert max_in_window([1.0, 1.0, 1.0], 0.001) == 3


def test_listening_line(emulators: dict[str, Emulator]) -> None:
    for emu in emulators.values():
        assert f"exchange-emulator: {emu.venue} on {emu.url} (api key emulator-key)" in emu.log.read_text()
