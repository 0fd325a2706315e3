"""Intake bounds without services: strict JSON, amounts, sizes, timing horizon, signal age, and
which exchanges the configured execution mode can serve. Every refusal carries a reason."""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import Settings, load_settings
from oms.models import CLIENT_ORDER_ID_MAX, AmendRequest, CancelRequest, client_order_id_for
from workers.intake import InvalidSignal, exchange_problem, parse_signal, servable_exchanges

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
LOCAL = load_settings(REPO / "config" / "local.yaml", env={})


def signal(**fields) -> dict:
    return {"signal_id": "s-1", "strategy_id": "alpha", "symbol": "BTC/USDT", "side": "buy",
            "quantity": "0.01", **fields}


def refusal(payload, settings: Settings = LOCAL, **kwargs) -> str:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    with pytest.raises(InvalidSignal) as info:
        parse_signal(payload, settings, now=NOW, **kwargs)
    return str(info.value)


def test_a_plain_signal_is_accepted():
    parsed = parse_signal(json.dumps(signal(created_at=NOW.isoformat())), LOCAL, now=NOW)
    assert str(parsed.quantity) == "0.01"


def test_duplicate_keys_are_refused_not_last_wins():
    text = json.dumps(signal())[:-1] + ', "quantity": "10"}'
    assert "duplicate key 'quantity'" in refusal(text)
    nested = json.dumps(signal(execution={"start_at": None}))[:-2] + ', "start_at": null}}'
    assert "duplicate key 'start_at'" in refusal(nested)


@pytest.mark.parametrize("quantity", ["1_0", "+1", " 1", "1 ", "\u0661", "\uff11", "0x10", "1e400", "NaN", "Infinity",
                                      "-1", "0", "1e12", "1.0000000000001", "", True])
def test_non_canonical_or_out_of_bounds_quantities_are_refused(quantity):
    assert refusal(signal(quantity=quantity)).startswith("quantity")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_literals_are_refused(number):
    text = json.dumps(signal())[:-1] + f', "reference_price": {number}}}'
    assert f"{number} is not a number" in refusal(text)


def test_json_numbers_are_exact_and_bounded():
    text = json.dumps(signal())[:-1] + ', "reference_price": 65000.123456789012}'
    assert str(parse_signal(text, LOCAL, now=NOW).reference_price) == "65000.123456789012"
    huge = json.dumps(signal())[:-1] + ', "reference_price": 1e400}'
    assert refusal(huge).startswith("reference_price")
    price = json.dumps(signal(order_type="limit"))[:-1] + ', "limit_price": 1e25}'
    assert refusal(price).startswith("limit_price")


def test_string_lengths_are_bounded():
    assert refusal(signal(strategy_id="x" * 65)).startswith("strategy_id")
    assert refusal(signal(signal_id="x" * 65)).startswith("signal_id")
    assert refusal(signal(symbol="A" * 21 + "/USDT")).startswith("symbol")
    assert refusal(signal(exchange="x" * 33)).startswith("exchange")


def test_the_longest_signal_id_still_gives_a_client_order_id_venues_accept():
    parsed = parse_signal(json.dumps(signal(signal_id="A.:" * 21 + "z")), LOCAL, now=NOW)
    for generation in (0, 1, 99):
        cid = client_order_id_for(parsed.workflow_id, generation)
        assert len(cid) <= CLIENT_ORDER_ID_MAX and all(c.isascii() and (c.isalnum() or c in "_-") for c in cid)


def test_payload_size_and_encoding():
    settings = LOCAL.with_overrides(messaging={**LOCAL.messaging.model_dump(mode="json"), "max_payload_bytes": 4096})
    big = json.dumps(signal(strategy_id="a", pad="x" * 5000))
    assert "payload too large" in refusal(big, settings) and "max_payload_bytes" in refusal(big, settings)
    assert "not UTF-8" in refusal(b"\xff\xfe\x00\x80garbage")
    assert "malformed JSON" in refusal(b"{\"signal_id\": ")


def test_start_at_and_expire_at_within_the_configured_horizon():
    far = refusal(signal(execution={"start_at": "9999-12-31T00:00:00Z"}))
    assert far.startswith("execution.start_at") and "orders.max_start_delay_s" in far
    soon = (NOW + timedelta(hours=1)).isoformat()
    assert parse_signal(json.dumps(signal(execution={"start_at": soon})), LOCAL, now=NOW).execution.start_at
    naive = refusal(signal(execution={"start_at": "2026-06-01T13:00:00"}))
    assert "timezone" in naive
    late = (NOW + timedelta(days=31)).isoformat()
    gtd = dict(order_type="limit", limit_price="50000", time_in_force="GTD")
    assert "orders.max_order_lifetime_s" in refusal(signal(**gtd, expire_at=late))
    assert parse_signal(json.dumps(signal(**gtd, expire_at=(NOW + timedelta(days=29)).isoformat())), LOCAL, now=NOW)
    assert "before execution.start_at" in refusal(signal(**gtd, expire_at=soon, execution={"start_at": soon}))
    shorter = LOCAL.with_overrides(orders={**LOCAL.orders.model_dump(mode="json"), "max_start_delay_s": 60})
    assert "(60 s)" in refusal(signal(execution={"start_at": soon}), shorter)


def test_signals_older_than_max_signal_age_are_refused():
    limit = LOCAL.messaging.max_signal_age_s
    old = (NOW - timedelta(seconds=limit + 1)).isoformat()
    reason = refusal(signal(created_at=old))
    assert reason.startswith("stale signal") and "messaging.max_signal_age_s" in reason
    assert parse_signal(json.dumps(signal(created_at=(NOW - timedelta(seconds=limit - 5)).isoformat())), LOCAL, now=NOW)
    # Without created_at a signal is as old as the stream entry that carried it.
    assert refusal(signal(), received_at=NOW - timedelta(seconds=limit + 1)).startswith("stale signal")
    assert parse_signal(json.dumps(signal()), LOCAL, now=NOW, received_at=NOW - timedelta(seconds=1))
    assert "in the future" in refusal(signal(created_at=(NOW + timedelta(hours=1)).isoformat()))


def _mode(mode: str, **accounts) -> Settings:
    execution = {"mode": mode, "direct": {"exchanges": ["binance", "bybit"], "accounts": accounts}}
    if mode == "quantconnect":
        execution["quantconnect"] = {"api_key": "k", "project_id": "1"}
    return Settings().with_overrides(execution=execution)


def test_exchanges_the_execution_mode_cannot_serve_are_refused():
    simulation, direct, quantconnect = _mode("simulation"), _mode("direct"), _mode("quantconnect")
    assert servable_exchanges(simulation) == {"simulation"}
    assert servable_exchanges(direct) == {"binance", "bybit"}
    assert servable_exchanges(quantconnect) == {"quantconnect"}
    # A direct account configured beside another mode is served (the worker registers it).
    assert servable_exchanges(_mode("simulation", binance={"base_url": "http://127.0.0.1:1"})) == {"simulation", "binance"}
    assert "cannot be served in execution mode simulation" in exchange_problem("binance", simulation)
    assert "cannot be served in execution mode direct" in exchange_problem("simulation", direct)
    assert "cannot be served in execution mode quantconnect" in exchange_problem("simulation", quantconnect)
    assert "unknown exchange" in exchange_problem("kraken", direct)
    assert exchange_problem(None, direct) is None and exchange_problem("bybit", direct) is None
    assert "cannot be served" in refusal(signal(exchange="binance"))  # config/local.yaml: simulation
    assert "cannot be served" in refusal(signal(exchange="simulation"), direct)


def test_amend_and_cancel_requests_forbid_unknown_fields_and_bound_values():
    with pytest.raises(ValidationError, match="side"):
        AmendRequest.model_validate({"quantity": "1", "side": "sell"})
    for bad in ("1e30", "1_0", "NaN", "0"):
        with pytest.raises(ValidationError, match="quantity"):
            AmendRequest.model_validate({"quantity": bad})
    with pytest.raises(ValidationError, match="reason"):
        CancelRequest.model_validate({"reason": "x" * 3_000_000})
    with pytest.raises(ValidationError, match="force"):
        CancelRequest.model_validate({"reason": "r", "force": True})
    assert AmendRequest.model_validate({"limit_price": "70000.5"}).limit_price is not None


# --- property: every signal is refused with a reason, or taken exactly as asked -----------------

from decimal import Decimal, InvalidOperation  # noqa: E402

from hypothesis import given, settings as hypothesis_settings, strategies as st  # noqa: E402

from oms.models import MAX_AMOUNT, MAX_SCALE  # noqa: E402

amount_text = st.one_of(
    st.decimals(min_value=Decimal("-10"), max_value=Decimal("1e14"), allow_nan=False, allow_infinity=False).map(str),
    st.integers(0, 14).flatmap(lambda places: st.decimals(min_value=0, max_value=Decimal("1e13"), places=places)).map(str),
    st.sampled_from(["1_0", "+1", " 1", "\u0661", "1e400", "NaN", "Infinity", "-0", "0", "1e-13", "0.000000000001",
                     "999999999999.999999999999", "1e12", "12", "0x1"]),
    st.floats(allow_nan=True, allow_infinity=True),
)
offsets = st.one_of(st.none(), st.integers(-10**7, 10**10))


def _exact(text) -> Decimal | None:
    """The decimal a caller meant, when it is spelled plainly."""
    if isinstance(text, float):
        return Decimal(repr(text)) if text == text and abs(text) != float("inf") else None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if text.strip() == text and "_" not in text and text.isascii() and not text.startswith("+") else None


@given(quantity=amount_text, price=st.one_of(st.none(), amount_text), start=offsets, expire=offsets,
       created=offsets, exchange=st.sampled_from([None, "simulation", "binance", "bybit", "quantconnect", "kraken"]))
@hypothesis_settings(max_examples=400, deadline=None)
def test_every_signal_is_refused_with_a_reason_or_taken_exactly_as_sent(quantity, price, start, expire, created,
                                                                        exchange):
    data = signal(quantity=quantity)
    if price is not None:
        data.update(order_type="limit", limit_price=price)
    if start is not None:
        data["execution"] = {"start_at": (NOW + timedelta(seconds=start)).isoformat()}
    if expire is not None:
        data.update(time_in_force="GTD", expire_at=(NOW + timedelta(seconds=expire)).isoformat())
        data.setdefault("order_type", "limit")
        data.setdefault("limit_price", "100")
    if created is not None:
        data["created_at"] = (NOW - timedelta(seconds=created)).isoformat()
    if exchange is not None:
        data["exchange"] = exchange
    try:
        parsed = parse_signal(json.dumps(data), LOCAL, now=NOW)
    except InvalidSignal as exc:
        reason = str(exc)
        assert reason and len(reason) < 500 and "Traceback" not in reason
        return
    # Accepted: exactly what was sent, within every bound.
    for field, sent in (("quantity", quantity), ("limit_price", data.get("limit_price"))):
        if sent is None:
            continue
        value, meant = getattr(parsed, field), _exact(sent)
        assert meant is not None and value == meant, (field, sent, value)
        assert 0 < value < MAX_AMOUNT and value == value.quantize(Decimal(1).scaleb(-MAX_SCALE))
    if start is not None:
        assert parsed.execution.start_at == NOW + timedelta(seconds=start)
        assert start <= LOCAL.orders.max_start_delay_s
    if expire is not None:
        assert parsed.expire_at == NOW + timedelta(seconds=expire) and expire <= LOCAL.orders.max_order_lifetime_s
    if created is not None:
        assert -60 <= created <= LOCAL.messaging.max_signal_age_s
    assert exchange in (None, "simulation")  # config/local.yaml: simulation mode
