"""Request body size limit for the HTTP API (`service.max_request_bytes`).

A plain ASGI middleware: a body over the limit is refused with 413 before it is read (by its
Content-Length), or as soon as the bytes received pass the limit (chunked uploads), so a 100 MB
request never sits in memory.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, without reading it whole: by its
    Content-Length before anything is read, else (chunked) as soon as the bytes received pass it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(send)
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        response = JSONResponse(status_code=413, content={
            "detail": f"request body larger than service.max_request_bytes ({self.limit} bytes)"})
        await response({"type": "http"}, None, send)
