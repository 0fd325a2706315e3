"""The AES-GCM payload codec (workers/payload_codec.py), its configuration and the codec server's
protocol, without a Temporal server: round trips, key rotation, tampering, CORS and auth."""
from __future__ import annotations

import base64
import os

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from config.settings import ConfigError, load_settings
from oms.models import OrderSnapshot
from tests.conftest import REPO
from tests.helpers import make_signal
from workers.codec_server import create_app
from workers.payload_codec import ENCODING, KEY_ID, AesGcmCodec, PayloadKeyError, key_id, parse_keys
from workers.runtime import data_converter


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def settings_with(tmp_path, **temporal):
    base = load_settings(REPO / "config" / "local.yaml", env={})
    return base.with_overrides(temporal={**base.temporal.model_dump(mode="json"), **temporal})


async def test_round_trip_hides_the_order_and_restores_it_exactly(tmp_path):
    key = new_key()
    converter = data_converter(settings_with(tmp_path, payload_key=key))
    signal = make_signal(symbol="BTC/USDT", strategy_id="strat-hidden-42", quantity="0.0123")
    encoded = await converter.encode([signal])
    raw = encoded[0].SerializeToString()
    assert encoded[0].metadata["encoding"] == ENCODING
    assert encoded[0].metadata[KEY_ID].decode() == key_id(base64.b64decode(key))
    for plain in (b"BTC/USDT", b"strat-hidden-42", b"0.0123", b"json/plain"):
        assert plain not in raw
    assert (await converter.decode(encoded, [type(signal)]))[0] == signal


async def test_no_key_no_encryption(tmp_path):
    converter = data_converter(settings_with(tmp_path))
    encoded = await converter.encode([make_signal(symbol="BTC/USDT")])
    assert encoded[0].metadata["encoding"] == b"json/plain" and b"BTC/USDT" in encoded[0].data


async def test_rotation_old_keys_decode_the_current_one_encrypts(tmp_path):
    old, new = new_key(), new_key()
    before = data_converter(settings_with(tmp_path, payload_key=old))
    after = data_converter(settings_with(tmp_path, payload_key=new, payload_old_keys=old))
    dropped = data_converter(settings_with(tmp_path, payload_key=new))
    signal = make_signal()
    stored_before = await before.encode([signal])
    stored_after = await after.encode([signal])
    assert stored_after[0].metadata[KEY_ID] != stored_before[0].metadata[KEY_ID]
    assert (await after.decode(stored_before, [type(signal)]))[0] == signal  # history from before rotation
    assert (await after.decode(stored_after, [type(signal)]))[0] == signal
    with pytest.raises(PayloadKeyError, match="not configured"):
        await dropped.decode(stored_before, [type(signal)])
    # An unencrypted payload (stored before encryption was turned on) still reads.
    plain = await data_converter(settings_with(tmp_path)).encode([signal])
    assert (await after.decode(plain, [type(signal)]))[0] == signal


def test_tampered_or_relabelled_ciphertext_is_refused():
    a, b = os.urandom(32), os.urandom(32)
    codec = AesGcmCodec(a, [b])
    sealed = codec.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'{"x":1}'))
    flipped = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        codec.decrypt(flipped)
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID: key_id(b).encode()}, data=sealed.data)
    with pytest.raises(PayloadKeyError, match="does not authenticate"):
        codec.decrypt(relabelled)


@pytest.mark.parametrize("value, problem", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"short").decode(), "5 bytes"),
])
def test_bad_keys_are_refused_at_load_without_echoing_them(tmp_path, value, problem):
    path = tmp_path / "c.yaml"
    path.write_text("temporal:\n  payload_key: ${K}\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings(path, env={"K": value})
    assert value not in str(caught.value) and "temporal.payload_key" in str(caught.value)


def test_config_refuses_two_current_keys_and_old_keys_alone(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("temporal:\n  payload_key: ${K:-}\n  payload_old_keys: ${OLD:-}\n")
    with pytest.raises(ConfigError, match="one key encrypts"):
        load_settings(path, env={"K": f"{new_key()},{new_key()}"})
    with pytest.raises(ConfigError, match="decrypt-only is not supported"):
        load_settings(path, env={"OLD": new_key()})
    assert load_settings(path, env={}).temporal.payload_key is None  # blank: no encryption
    assert len(parse_keys(f"{new_key()}, {new_key()}")) == 2


def _body(payloads: list[Payload]) -> dict:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def _payloads(body: dict) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


async def test_codec_server_protocol_cors_namespace_and_auth(tmp_path):
    key = new_key()
    settings = settings_with(tmp_path, payload_key=key,
                             codec_server={"cors_origins": ["http://localhost:8233"], "auth_token": "tok-123"})
    snapshot_payload = (await data_converter(settings_with(tmp_path)).encode(
        [make_signal(symbol="BTC/USDT")]))[0]
    client = TestClient(create_app(settings, AesGcmCodec(base64.b64decode(key))))
    auth = {"Authorization": "Bearer tok-123", "X-Namespace": "default"}

    encoded = client.post("/encode", json=_body([snapshot_payload]), headers=auth)
    assert encoded.status_code == 200, encoded.text
    assert "BTC/USDT" not in encoded.text
    decoded = client.post("/decode", json=encoded.json(), headers=auth)
    assert decoded.status_code == 200 and _payloads(decoded.json()) == [snapshot_payload]

    assert client.post("/decode", json=encoded.json()).status_code == 401
    assert client.post("/decode", json=encoded.json(), headers={"Authorization": "Bearer nope"}).status_code == 401
    wrong_ns = client.post("/decode", json=encoded.json(), headers={**auth, "X-Namespace": "other"})
    assert wrong_ns.status_code == 403 and "other" in wrong_ns.json()["error"]
    assert client.post("/decode", content=b"{nope", headers=auth).status_code == 400

    preflight = client.options("/decode", headers={"Origin": "http://localhost:8233",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "content-type,x-namespace"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:8233"
    foreign = client.options("/decode", headers={"Origin": "https://evil.example",
                                                 "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in foreign.headers


def test_snapshot_fills_are_bounded():
    from datetime import datetime, timezone
    from decimal import Decimal

    from oms.models import SNAPSHOT_FILLS_MAX, FillRecord

    now = datetime.now(timezone.utc)
    snap = OrderSnapshot(order_id="order-x", signal_id="x", strategy_id="s", client_order_id="order-x",
                         symbol="BTC/USDT", side="buy", order_type="limit", time_in_force="GTC",
                         quantity=Decimal(1), exchange="simulation", created_at=now, updated_at=now)
    for i in range(SNAPSHOT_FILLS_MAX + 7):
        snap.record_fill(FillRecord(trade_id=f"t{i}", quantity=Decimal("0.01"), price=Decimal(100), at=now))
    assert snap.fill_count == SNAPSHOT_FILLS_MAX + 7 and len(snap.fills) == SNAPSHOT_FILLS_MAX
    assert snap.fills[0].trade_id == "t7" and snap.fills[-1].trade_id == f"t{SNAPSHOT_FILLS_MAX + 6}"


def test_codec_server_refuses_to_start_without_a_key_or_exposed_without_a_token(tmp_path):
    from tests.conftest import run_tom

    plain = tmp_path / "plain.yaml"
    plain.write_text(settings_with(tmp_path).to_yaml())
    out = run_tom(plain, "codec-server", timeout=60)
    assert out.returncode == 1 and "temporal.payload_key is not set" in out.stderr, out.stderr
    key = new_key()
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text(settings_with(tmp_path, payload_key=key).to_yaml())
    out = run_tom(exposed, "codec-server", "--host", "0.0.0.0", timeout=60)
    assert out.returncode == 1 and "without temporal.codec_server.auth_token" in out.stderr, out.stderr
    assert key not in out.stderr + out.stdout
