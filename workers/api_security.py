"""Who may call which endpoint of the HTTP API, and what a browser page may not make it do.

One ASGI middleware, in front of everything else (body limit, routing, validation), so a request is
judged before a byte of its body is read or a parameter is checked:
  1. authentication (`service.api_tokens`): with any token set, every endpoint but the probes needs
     `Authorization: Bearer <token>`: 401 without a valid one, 403 without the endpoint's scope,
     429 (with Retry-After) past the token's `requests_per_minute` (a bucket per API process);
  2. cross-site refusal: a state-changing request carrying an `Origin` not in
     `service.allowed_origins` is refused with 403, with or without a token (a web page a trader
     opens must never place orders through a local API);
  3. only JSON bodies: a state-changing request whose body is not `application/json` gets 415 (a
     `text/plain` POST is what a page can send cross-site without a CORS preflight).
No CORS headers are ever sent, so browsers keep foreign pages from reading any answer.

Tokens are compared in constant time against every configured token (SHA-256 digests, so neither
the length nor the position of a mismatch shows), and never logged or echoed: error details name
only what is missing.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import time
from typing import Literal

from starlette.routing import Match

from config.settings import ServiceSettings

Scope = Literal["public", "read", "trade"]
PUBLIC: Scope = "public"
UNDECIDED = "undecided"
ANY_TOKEN = "any-token"

# Every endpoint's decision, by method and path template: a scope, or PUBLIC. A route missing from
# this table is refused to every token (and tests/test_api_auth.py fails), so a new endpoint cannot
# ship without a decision. The schema and its docs pages need `read`: they describe what a reader
# may do, and an anonymous caller has no use for them.
ENDPOINT_SCOPES: dict[tuple[str, str], Scope] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): "read",
    ("GET", "/docs"): "read",
    ("GET", "/docs/oauth2-redirect"): "read",
    ("GET", "/redoc"): "read",
    ("GET", "/orders"): "read",
    ("GET", "/orders/{order_id}"): "read",
    ("GET", "/positions"): "read",
    ("GET", "/report"): "read",
    ("POST", "/signals"): "trade",
    ("POST", "/orders/{order_id}/cancel"): "trade",
    ("PATCH", "/orders/{order_id}"): "trade",
}
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = frozenset({"application/json"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API reachable from this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name or 0.0.0.0-like wildcard: other machines may reach it


def open_bind_refusal(host: str, service: ServiceSettings) -> str | None:
    """The one line an API bound to `host` without any token set must stop with, or None."""
    if is_loopback(host) or service.active_tokens():
        return None
    return (f"refusing to serve the API on non-loopback address {host!r} without authentication: "
            "set a token in service.api_tokens (from the environment), or bind 127.0.0.1")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class RateLimit:
    """A token bucket: `per_minute` requests in a burst, refilled evenly over the minute."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.capacity, self.rate, self.clock = float(per_minute), per_minute / 60.0, clock
        self.tokens, self.at = self.capacity, clock()

    def take(self) -> float:
        """0 when the request may go, else the seconds until it could."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class TokenBook:
    """The configured tokens as digests, the scopes each grants and its rate limit."""

    def __init__(self, service: ServiceSettings) -> None:
        self.entries = [(_digest(t.token.get_secret_value().encode()), frozenset(t.scopes), name)
                        for name, t in service.active_tokens().items()]
        self.limits = {name: RateLimit(t.requests_per_minute)
                       for name, t in service.active_tokens().items() if t.requests_per_minute}

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def match(self, presented: bytes) -> tuple[str, frozenset[str]] | None:
        """(name, scopes) of the token presented, or None; every entry is compared, match or not."""
        probe = _digest(presented)
        found = None
        for digest, scopes, name in self.entries:
            if hmac.compare_digest(probe, digest):
                found = (name, scopes)
        return found

    def scopes_of(self, presented: bytes) -> frozenset[str] | None:
        found = self.match(presented)
        return found[1] if found else None


def _bearer(headers: dict[bytes, bytes]) -> bytes | None:
    value = headers.get(b"authorization")
    if value is None:
        return None
    kind, _, token = value.partition(b" ")
    return token.strip() if kind.lower() == b"bearer" and token.strip() else None


def _media_type(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"content-type")
    if value is None:
        return None
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"0", b"")
    return b"transfer-encoding" in headers


class ApiSecurity:
    """The ASGI middleware: authentication, origin and content-type checks (module docstring)."""

    def __init__(self, app, service: ServiceSettings, routes_of) -> None:
        self.app = app
        self.tokens = TokenBook(service)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in service.allowed_origins)
        self.routes_of = routes_of  # () -> the app's routes, read per request (routes exist after build)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.judge(scope)
        if refusal is not None:
            return await _refuse(send, *refusal)
        await self.app(scope, receive, send)

    def judge(self, scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        method = scope["method"].upper()
        headers = {k.lower(): v for k, v in scope["headers"]}
        if self.tokens.enabled:
            needed = self.decision(scope, method)
            if needed != PUBLIC:
                presented = _bearer(headers)
                found = self.tokens.match(presented) if presented is not None else None
                if found is None:
                    if presented is None:
                        return 401, "a bearer token is required", [(b"www-authenticate", b'Bearer realm="tom"')]
                    return 401, "the bearer token is not valid", [
                        (b"www-authenticate", b'Bearer realm="tom", error="invalid_token"')]
                if needed == UNDECIDED:
                    return 403, "this endpoint has no access decision; nobody may call it", []
                name, scopes = found
                if needed in ("read", "trade") and needed not in scopes:
                    return 403, f"this token lacks the '{needed}' scope", []
                limit = self.tokens.limits.get(name)
                wait = limit.take() if limit is not None else 0.0
                if wait:
                    return 429, "this token's requests_per_minute is used up; retry later", [
                        (b"retry-after", str(math.ceil(wait)).encode())]
        if method in STATE_CHANGING:
            origin = headers.get(b"origin")
            if origin is not None and origin.decode("latin-1").rstrip("/").lower() not in self.allowed_origins:
                return 403, "cross-site request refused: this Origin is not in service.allowed_origins", []
            media = _media_type(headers)
            if (media is not None or _has_body(headers)) and media not in JSON_TYPES:
                return 415, "request bodies must be application/json", []
        return None

    def decision(self, scope, method: str) -> str:
        """`public`, `read`, `trade`, UNDECIDED (a route missing from ENDPOINT_SCOPES), or
        ANY_TOKEN: a path no route serves for this method needs a valid token of any scope (its
        404 or 405 then comes from the router), so anonymous callers learn nothing of the paths."""
        method = "GET" if method == "HEAD" else method
        for route in self.routes_of():
            match, _ = route.matches({**scope, "method": method})
            if match == Match.FULL:
                return ENDPOINT_SCOPES.get((method, route.path), UNDECIDED)
        return ANY_TOKEN


async def _refuse(send, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def document(spec: dict, service: ServiceSettings) -> None:
    """Describe the checks in the OpenAPI document: the bearer scheme and the scope of each
    operation (with tokens set), and the refusals each operation can answer."""
    enabled = bool(service.active_tokens())
    problem = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    if enabled:
        spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "description": "a token of service.api_tokens"}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            needed = ENDPOINT_SCOPES.get((method.upper(), path), UNDECIDED)
            responses = operation.setdefault("responses", {})
            if enabled and needed != PUBLIC:
                operation["security"] = [{"bearer": []}]
                operation["description"] = (operation.get("description", "") +
                                             f"\n\nNeeds a bearer token with the `{needed}` scope.").strip()
                responses.setdefault("401", {"description": "no valid bearer token", **problem})
                responses.setdefault("403", {"description": "the token lacks the scope", **problem})
                if any(t.requests_per_minute for t in service.active_tokens().values()):
                    responses.setdefault("429", {"description": "the token's rate limit is used up", **problem})
            if method.upper() in STATE_CHANGING:
                responses.setdefault("403", {"description": "a cross-site Origin", **problem})
                responses.setdefault("415", {"description": "a body that is not application/json", **problem})
