"""Signal schema and the deterministic client order id."""
import re

import pytest
from pydantic import ValidationError

from oms.models import AmendRequest, Signal, client_order_id_for, workflow_id_for

VALID = {"signal_id": "sig-1", "strategy_id": "momo", "symbol": "BTC/USDT", "side": "buy", "quantity": "0.01"}


def test_valid_signal_and_workflow_id():
    signal = Signal.model_validate(VALID)
    assert signal.workflow_id == "order-sig-1"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"quantity": "-1"}, "greater than 0"),
        ({"symbol": "btcusdt"}, "pattern"),
        ({"side": "long"}, "'buy' or 'sell'"),
        ({"order_type": "limit"}, "limit_price is required"),
        ({"order_type": "market", "limit_price": "10"}, "not allowed on a market order"),
        ({"time_in_force": "GTD"}, "expire_at is required"),
        ({"expire_at": "2030-01-01T00:00:00"}, "timezone"),
        ({"signal_id": "has space"}, "pattern"),
        ({"surprise": 1}, "Extra inputs"),
        ({"quantity": "NaN"}, "finite"),
    ],
)
def test_invalid_signals_are_refused_with_a_reason(change, message):
    with pytest.raises(ValidationError, match=message):
        Signal.model_validate({**VALID, **change})


@pytest.mark.parametrize(
    "workflow_id",
    ["order-sig-1", "order-" + "x" * 64, "order-a.b:c", "order-" + "y" * 29, "order-" + "y" * 30],
)
@pytest.mark.parametrize("generation", [0, 1, 12])
def test_client_order_id_fits_the_exchanges_rules(workflow_id, generation):
    cid = client_order_id_for(workflow_id, generation)
    assert len(cid) <= 36 and re.fullmatch(r"[A-Za-z0-9_-]+", cid)
    assert cid == client_order_id_for(workflow_id, generation)  # deterministic


def test_client_order_ids_do_not_collide():
    long_a, long_b = "order-" + "a" * 40 + "1", "order-" + "a" * 40 + "2"
    ids = {client_order_id_for(w, g) for w in (long_a, long_b, "order-a.b", "order-a_b") for g in (0, 1)}
    assert len(ids) == 8


def test_amend_needs_something():
    with pytest.raises(ValidationError, match="quantity or limit_price"):
        AmendRequest()
    assert workflow_id_for("x") == "order-x"
