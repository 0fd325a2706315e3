"""Venue status tables: every status of every adapter mapped to the order model with its fills,
row by row, and the terminal-with-partial-fills cases reproduced against `tom exchange-emulator`
through the real ccxt client (Bybit PartiallyFilledCanceled, Binance EXPIRED / EXPIRED_IN_MATCH)."""
from __future__ import annotations

from decimal import Decimal

import pytest
import pytest_asyncio

from activities.venues.ccxt_dialects import BINANCE_STATUS, BYBIT_STATUS, DIALECTS
from activities.venues.ccxt_exchange import build_ccxt_adapters
from activities.venues.quantconnect import LEAN_STATUS, LEAN_STATUS_TABLE, QCOrder, QuantConnectVenue, order_tag
from activities.venues.simulated import SIM_STATUS
from oms.models import OrderType, Side
from oms.venue import VenueOrderRef, VenueOrderRequest, VenueOrderStatus as S
from oms.venue_status import resolve
from tests.conftest import direct_settings

NONE, SOME = Decimal(0), Decimal("0.5")
N, P, F, C, E, R, U = S.NEW, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.EXPIRED, S.REJECTED, S.UNRECOGNIZED

# (raw status, status without fills, status with partial fills): written out here, not derived from
# the tables under test.
BINANCE_ROWS = [
    ("NEW", N, P), ("PENDING_NEW", N, P), ("PARTIALLY_FILLED", N, P), ("PENDING_CANCEL", N, P),
    ("FILLED", F, F), ("CANCELED", C, C), ("REJECTED", R, C), ("EXPIRED", E, E), ("EXPIRED_IN_MATCH", E, E),
]
BYBIT_ROWS = [
    ("New", N, P), ("PartiallyFilled", N, P), ("Untriggered", N, P), ("Triggered", N, P), ("Active", N, P),
    ("Filled", F, F), ("Cancelled", C, C), ("PartiallyFilledCanceled", C, C), ("Deactivated", C, C),
    ("Rejected", R, C),
]
LEAN_ROWS = [  # Lean OrderStatus by its integer value, as the REST API sends it
    (0, N, P), (1, N, P), (2, N, P), (3, F, F), (5, C, C), (6, N, P), (7, R, C), (8, N, P), (9, N, P),
]
SIM_ROWS = [("new", N, P), ("partially_filled", N, P), ("filled", F, F), ("cancelled", C, C),
            ("expired", E, E), ("rejected", R, C)]


def _check(table, rows, venue):
    assert {row[0] for row in rows} == set(table), "every status of the venue has a tested row"
    for raw, without, with_fills in rows:
        assert resolve(table, venue, raw, NONE)[0] == without, raw
        assert resolve(table, venue, raw, SOME)[0] == with_fills, raw


def test_binance_table_maps_every_status():
    _check(BINANCE_STATUS, BINANCE_ROWS, "binance")


def test_bybit_table_maps_every_status():
    _check(BYBIT_STATUS, BYBIT_ROWS, "bybit")


def test_simulation_table_maps_every_status():
    assert set(SIM_STATUS) == {s.value for s in (N, P, F, C, E, R)}  # every status the model stores
    _check(SIM_STATUS, SIM_ROWS, "simulation")


def test_lean_table_maps_every_order_status():
    assert set(LEAN_STATUS) == {row[0] for row in LEAN_ROWS}
    _check(LEAN_STATUS_TABLE, [(LEAN_STATUS[n], a, b) for n, a, b in LEAN_ROWS], "quantconnect")


def test_unknown_statuses_are_unrecognized_with_the_raw_status_never_guessed(caplog):
    for table in (BINANCE_STATUS, BYBIT_STATUS, LEAN_STATUS_TABLE, SIM_STATUS):
        status, reason = resolve(table, "venue-x", "HALTED_FOR_LUNCH", SOME)
        assert status == U and "HALTED_FOR_LUNCH" in reason
    status, reason = resolve(BYBIT_STATUS, "bybit", None, NONE)
    assert status == U
    assert "HALTED_FOR_LUNCH" in caplog.text


def _lean_order(status: int, fills: list[str], ioc: bool = False) -> QCOrder:
    return QCOrder.model_validate({
        "id": 7, "quantity": "1", "type": 0, "status": status, "tag": order_tag("cid-1", ioc),
        "symbol": {"value": "BTCUSDT"},
        "events": [{"orderEventId": i + 1, "fillQuantity": q, "fillPrice": "100", "time": 1_700_000_000}
                   for i, q in enumerate(fills)]})


@pytest.mark.parametrize("status, fills, expected", [
    (5, ["0.4"], C),  # cancelled after a partial fill: cancelled, with the fill
    (7, ["0.4"], C),  # a late Invalid after a fill ends the order with its fill, not a rejection
    (7, [], R),
    (4, [], U),  # no such Lean status: unrecognized, not "none" (open)
    (8, ["0.4"], P),  # cancel pending: still working
])
def test_quantconnect_reports_carry_fills_with_terminal_statuses(status, fills, expected):
    venue = QuantConnectVenue.__new__(QuantConnectVenue)
    venue.name = "quantconnect"
    report = venue._report(_lean_order(status, fills), "BTC/USDT")
    assert report.status == expected
    assert report.filled_quantity == sum((Decimal(q) for q in fills), Decimal(0)) == sum(
        (f.quantity for f in report.fills), Decimal(0))
    if expected == U:
        assert "status 4" in report.reason


def test_dialects_read_the_raw_venue_status_not_ccxts_unified_one():
    # ccxt parses Bybit's PartiallyFilledCanceled as `closed`: the raw word decides.
    order = {"status": "closed", "filled": 4.16, "info": {"orderStatus": "PartiallyFilledCanceled"}}
    assert DIALECTS["bybit"].raw_status(order) == "PartiallyFilledCanceled"
    assert DIALECTS["binance"].raw_status({"status": "expired", "info": {"status": "EXPIRED_IN_MATCH"}}) == \
        "EXPIRED_IN_MATCH"


# --- reproductions against the emulator --------------------------------------------------------

@pytest_asyncio.fixture
async def venue(request, fast_settings, emulators, redis):
    name = request.param
    settings = direct_settings(fast_settings, emulators, (name,), orders={"rate_limit_orders": 1000})
    (adapter,) = build_ccxt_adapters(settings, redis)
    yield adapter, emulators[name]
    await adapter.close()


async def _market_buy_beyond_depth(adapter, cid: str, quantity: str):
    report = await adapter.submit(VenueOrderRequest(
        exchange=adapter.name, client_order_id=cid, symbol="BTC/USDT", side=Side.BUY,
        order_type=OrderType.MARKET, quantity=Decimal(quantity)))
    fetched = await adapter.fetch(VenueOrderRef(exchange=adapter.name, client_order_id=cid, symbol="BTC/USDT"))
    return report, fetched


@pytest.mark.parametrize("venue", ["bybit"], indirect=True)
async def test_bybit_market_order_beyond_a_one_level_book_ends_cancelled_with_its_fills(venue):
    adapter, emulator = venue
    emulator.shape(depth_levels=1)
    report, fetched = await _market_buy_beyond_depth(adapter, "deep-8", "8")
    (placed,) = [o for o in emulator.orders() if o["client_order_id"] == "deep-8"]
    filled = Decimal(placed["filled"])
    assert Decimal(0) < filled < Decimal(8)  # the venue filled part and ended the rest
    for answer in (report, fetched):
        assert answer.status == S.CANCELLED, answer
        assert answer.filled_quantity == filled == sum((f.quantity for f in answer.fills), Decimal(0))


@pytest.mark.parametrize("venue", ["binance"], indirect=True)
@pytest.mark.parametrize("self_trade_expiry", [False, True], ids=["EXPIRED", "EXPIRED_IN_MATCH"])
async def test_binance_market_order_beyond_a_one_level_book_ends_expired_with_its_fills(venue, self_trade_expiry):
    adapter, emulator = venue
    emulator.shape(depth_levels=1, self_trade_expiry=self_trade_expiry)
    report, fetched = await _market_buy_beyond_depth(adapter, "deep-b", "8")
    (placed,) = [o for o in emulator.orders() if o["client_order_id"] == "deep-b"]
    filled = Decimal(placed["filled"])
    assert Decimal(0) < filled < Decimal(8)
    for answer in (report, fetched):
        assert answer.status == S.EXPIRED, answer
        assert answer.filled_quantity == filled == sum((f.quantity for f in answer.fills), Decimal(0))


def test_emulator_book_shape_is_validated_and_reset(emulators):
    import httpx

    emulator = emulators["bybit"]
    assert emulator.shape(depth_levels=1) == {"depth_levels": 1, "self_trade_expiry": False,
                                              "maker_fee": 0.0002, "taker_fee": 0.0005}
    assert emulator.shape(taker_fee=0.001)["taker_fee"] == 0.001
    bad = httpx.post(f"{emulator.url}/_emulator/book", json={"depth_levels": 0}, timeout=10)
    assert bad.status_code == 400 and "depth_levels" in bad.json()["error"]
    bad = httpx.post(f"{emulator.url}/_emulator/book", json={"taker_fee": 0.5}, timeout=10)
    assert bad.status_code == 400 and "taker_fee" in bad.json()["error"]
    emulator.reset()
    assert emulator.admin("GET", "book")["depth_levels"] == 10
    assert emulator.admin("GET", "book")["taker_fee"] == 0.0005
