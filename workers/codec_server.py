"""`tom codec-server`: decrypts order payloads for the Temporal UI and the `temporal` CLI.

Temporal's remote codec protocol: POST /decode (and /encode) with `{"payloads": [...]}` in the
protobuf JSON form, answered in the same form; the `X-Namespace` header names the namespace. The UI
calls it from the operator's browser, so only the configured UI origins get CORS headers. With
`temporal.codec_server.auth_token` every call needs `Authorization: Bearer <token>` (compared in
constant time); bound beyond loopback it refuses to start without one, since whoever reaches it
can read every order. The keys never leave this process: it answers with payloads only.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from temporalio.api.common.v1 import Payloads

from config.settings import Settings
from workers.payload_codec import AesGcmCodec, PayloadKeyError, codec_from_settings

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 * 1024 * 1024


def _refusal(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings, codec: AesGcmCodec) -> FastAPI:
    server = settings.temporal.codec_server
    token = server.auth_token.get_secret_value() if server.auth_token else None
    namespace = settings.temporal.namespace
    app = FastAPI(title="tom codec server", openapi_url=None, docs_url=None, redoc_url=None)

    async def transform(request: Request, decode: bool) -> JSONResponse:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _refusal(401, "a valid Authorization: Bearer token is required")
        asked = request.headers.get("x-namespace")
        if asked is not None and asked != namespace:
            return _refusal(403, f"this codec server serves namespace {namespace!r}, not {asked!r}")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _refusal(413, f"body above {MAX_BODY_BYTES} bytes")
        payloads = Payloads()
        try:
            json_format.Parse(body or b"{}", payloads)
        except json_format.ParseError as error:
            return _refusal(400, f"expected {{\"payloads\": [...]}} in protobuf JSON: {str(error)[:200]}")
        try:
            out = await (codec.decode if decode else codec.encode)(list(payloads.payloads))
        except PayloadKeyError as error:
            return _refusal(422, str(error))
        return JSONResponse(json_format.MessageToDict(Payloads(payloads=out)))

    @app.post("/decode")
    async def decode(request: Request) -> JSONResponse:
        return await transform(request, decode=True)

    @app.post("/encode")
    async def encode(request: Request) -> JSONResponse:
        return await transform(request, decode=False)

    app.add_middleware(
        CORSMiddleware, allow_origins=list(server.cors_origins), allow_methods=["POST", "OPTIONS"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"], allow_credentials=True, max_age=600,
    )
    return app


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(settings: Settings, args) -> int:
    import uvicorn

    from workers.cli import UserError
    from workers.runtime import configure_logging

    codec = codec_from_settings(settings.temporal)
    if codec is None:
        raise UserError("temporal.payload_key is not set: payloads are not encrypted, there is nothing to decode")
    server = settings.temporal.codec_server
    host = args.host or server.host
    port = args.port or server.port
    if not _loopback(host) and server.auth_token is None:
        raise UserError(f"refusing to serve decrypted payloads on {host} without "
                        "temporal.codec_server.auth_token (bind to localhost, or set a token)")
    configure_logging(settings)
    print(f"tom codec-server: http://{host}:{port} (namespace {settings.temporal.namespace}, "
          f"encrypting with key id {codec.current_key_id})", flush=True)
    uvicorn.run(create_app(settings, codec), host=host, port=port,
                log_level=settings.orders.log_level.value.lower(), access_log=False,
                log_config=None)  # uvicorn's lines through configure_logging's handler (JSON, redacted)
    return 0
