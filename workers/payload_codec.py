"""AES-GCM payload encryption for everything the platform stores in Temporal.

Order terms (symbols, sizes, prices, strategy ids) travel in workflow inputs, results, local
activity markers, queries, updates, failures and the UI's summaries. With `temporal.payload_key`
set, every one of those payloads is encrypted before it leaves the process; the Temporal server,
its database and anyone reading a history without the key see only ciphertext. Search attributes
are not payloads: they stay readable, by design, so that operators can filter orders.

An encrypted payload carries the id of its key in its metadata. Keys rotate: the current key
encrypts, `temporal.payload_old_keys` still decrypt what they encrypted. A key id is a hash of the
key, never the key. Without a key nothing is encrypted (the local default) and encrypted payloads
cannot be read: decoding names the key id it lacks.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32  # AES-256


class PayloadKeyError(ValueError):
    """A malformed key, or a payload encrypted with a key this process does not hold."""


def key_id(key: bytes) -> str:
    """A public name for a key (what payload metadata records): a truncated hash of it."""
    return hashlib.sha256(b"tom-payload-key\0" + key).hexdigest()[:16]


def parse_keys(text: str) -> list[bytes]:
    """Comma-separated base64 keys of 32 bytes each. Errors never quote the key."""
    keys = []
    for position, part in enumerate((p.strip() for p in text.split(",")), start=1):
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadKeyError(f"key {position} is not base64") from None
        if len(key) != KEY_BYTES:
            raise PayloadKeyError(f"key {position} is {len(key)} bytes; AES-256 needs {KEY_BYTES} "
                                  "(make one: python -c \"import base64,os; print(base64.b64encode(os.urandom(32)).decode())\")")
        keys.append(key)
    if not keys:
        raise PayloadKeyError("no key given")
    return keys


class AesGcmCodec(PayloadCodec):
    """Encrypts with one current key; decrypts with any key it holds, chosen by the payload's key id.
    The key id is authenticated data: a payload cannot be made to claim another key."""

    def __init__(self, current: bytes, old: Sequence[bytes] = ()) -> None:
        self._current_id = key_id(current)
        self._current = AESGCM(current)
        self._keys = {key_id(k): AESGCM(k) for k in (*old, current)}

    @property
    def current_key_id(self) -> str:
        return self._current_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, payload.SerializeToString(), self._current_id.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self._current_id.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # stored before encryption was turned on, or not ours to decode
        kid = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self._keys.get(kid)
        if cipher is None:
            raise PayloadKeyError(f"payload encrypted with key id {kid!r}, which is not configured "
                                  "(temporal.payload_key / temporal.payload_old_keys)")
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            return Payload.FromString(cipher.decrypt(nonce, sealed, kid.encode()))
        except Exception:  # InvalidTag: altered ciphertext or the wrong key under this id
            raise PayloadKeyError(f"payload under key id {kid!r} does not authenticate") from None


def codec_from_settings(temporal) -> AesGcmCodec | None:
    """The codec `temporal.payload_key` / `payload_old_keys` configure, or None (no encryption)."""
    if temporal.payload_key is None:
        return None
    old = parse_keys(temporal.payload_old_keys.get_secret_value()) if temporal.payload_old_keys else []
    return AesGcmCodec(parse_keys(temporal.payload_key.get_secret_value())[0], old)


def with_encryption(converter: DataConverter, codec: AesGcmCodec | None) -> DataConverter:
    """`converter` encrypting through `codec`, failure messages and stack traces included (they
    can quote order terms); unchanged without a codec."""
    if codec is None:
        return converter
    return dataclasses.replace(converter, payload_codec=codec,
                               failure_converter_class=DefaultFailureConverterWithEncodedAttributes)
