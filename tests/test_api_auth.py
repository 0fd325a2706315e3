"""The HTTP API's access rules (workers/api_security.py): bearer tokens and scopes, cross-site and
non-JSON refusals, the refusal to serve an open API beyond loopback, and the CLI's token."""
from __future__ import annotations

import json
import os
import secrets

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings
from schemathesis.checks import positive_data_acceptance

from config.settings import ConfigError, load_settings
from tests.conftest import REPO, run_tom, stop_api, stop_process, tom_process, wait_for_http
from tests.helpers import make_signal
from workers.api import Services, create_app
from workers.api_security import ENDPOINT_SCOPES, TokenBook, is_loopback
from storage.duckdb import DuckDBStore

READ_TOKEN = "read-" + secrets.token_urlsafe(32)
TRADE_TOKEN = "trade-" + secrets.token_urlsafe(32)
WRONG_TOKEN = "wrong-" + secrets.token_urlsafe(32)

# The documented decision of every endpoint (README "Security"): who may call it. Kept apart from
# the code's table on purpose: the test compares the API against this, route by route.
DOCUMENTED = {
    ("GET", "/healthz"): "public", ("GET", "/readyz"): "public", ("GET", "/metrics"): "public",
    ("GET", "/openapi.json"): "read", ("GET", "/docs"): "read", ("GET", "/docs/oauth2-redirect"): "read",
    ("GET", "/redoc"): "read",
    ("GET", "/orders"): "read", ("GET", "/orders/{order_id}"): "read", ("GET", "/positions"): "read",
    ("GET", "/report"): "read",
    ("POST", "/signals"): "trade", ("POST", "/orders/{order_id}/cancel"): "trade",
    ("PATCH", "/orders/{order_id}"): "trade",
}


def auth_settings(settings, **service):
    return settings.with_overrides(service={
        **settings.service.model_dump(mode="json"),
        "api_tokens": {"reader": {"token": READ_TOKEN, "scopes": ["read"]},
                       "trader": {"token": TRADE_TOKEN, "scopes": ["trade"]}},
        **service})


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
async def auth_app(stack_settings, temporal_env, redis, tmp_path):
    """The API in this process on the session's Temporal, a real Redis and DuckDB, tokens on."""
    settings = auth_settings(stack_settings)
    store = DuckDBStore(str(tmp_path / "auth.duckdb"))
    app = create_app(settings, Services(settings, temporal_env.client, redis, store), run_recorder=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
        yield app, client
    store.close()


def example_request(method: str, path: str) -> dict:
    """A well-formed request to each endpoint (a new order, a missing order to cancel or amend)."""
    url = path.replace("{order_id}", "order-auth-missing")
    body = None
    if (method, path) == ("POST", "/signals"):
        body = make_signal(order_type="limit", limit_price="100.00").model_dump(mode="json", exclude_none=True)
    elif method == "PATCH":
        body = {"quantity": "0.2"}
    elif method == "POST":
        body = {"reason": "auth test"}
    return {"method": method, "url": url, **({"json": body} if body is not None else {})}


async def test_every_endpoint_answers_each_kind_of_caller_as_documented(auth_app):
    app, client = auth_app
    spec = (await client.get("/openapi.json", headers=bearer(READ_TOKEN))).json()
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served |= {("GET", r.path) for r in app.routes if r.path in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")}
    undecided = served - set(DOCUMENTED)
    assert not undecided, f"endpoints without a documented access decision: {sorted(undecided)}"
    assert set(DOCUMENTED) == served, sorted(set(DOCUMENTED) ^ served)
    assert all(ENDPOINT_SCOPES.get(key) == scope for key, scope in DOCUMENTED.items())

    for (method, path), scope in sorted(DOCUMENTED.items()):
        request = example_request(method, path)
        answers = {}
        for caller, token in (("none", None), ("wrong", WRONG_TOKEN), ("read", READ_TOKEN), ("trade", TRADE_TOKEN)):
            response = await client.request(**request, headers=bearer(token))
            answers[caller] = response.status_code
            assert TRADE_TOKEN not in response.text and READ_TOKEN not in response.text
            assert WRONG_TOKEN not in response.text
            if response.status_code == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
        where = f"{method} {path}: {answers}"
        if scope == "public":
            assert all(status not in (401, 403) for status in answers.values()), where
            continue
        assert answers["none"] == 401 and answers["wrong"] == 401, where
        allowed, refused = ("read", "trade") if scope == "read" else ("trade", "read")
        assert answers[refused] == 403, where
        assert answers[allowed] not in (401, 403, 415) and answers[allowed] < 500, where
    assert (await client.get("/orders/order-auth-missing", headers=bearer(READ_TOKEN))).status_code == 404
    assert (await client.post("/orders/order-auth-missing/cancel", json={}, headers=bearer(TRADE_TOKEN))).status_code == 404


async def test_unknown_paths_need_a_token_before_they_answer_404(auth_app):
    _, client = auth_app
    assert (await client.get("/admin")).status_code == 401
    assert (await client.get("/admin", headers=bearer(READ_TOKEN))).status_code == 404
    assert (await client.delete("/orders", headers=bearer(TRADE_TOKEN))).status_code == 405
    # A malformed Authorization header is simply no token.
    for header in ("Basic abc", "Bearer", "Bearer  ", READ_TOKEN):
        assert (await client.get("/orders", headers={"Authorization": header})).status_code == 401


async def test_cross_site_and_non_json_requests_are_refused_with_or_without_tokens(stack_settings, temporal_env,
                                                                                  redis, tmp_path):
    """Without any token (a local `tom dev`), a web page must still not be able to place an order:
    the simple `text/plain` POST a page can send cross-site, and any foreign Origin, are refused."""
    allowed = "https://desk.example.com"
    store = DuckDBStore(str(tmp_path / "origin.duckdb"))
    try:
        for settings, headers in ((stack_settings.with_overrides(service={
                **stack_settings.service.model_dump(mode="json"), "allowed_origins": [allowed]}), {}),
                                  (auth_settings(stack_settings, allowed_origins=[allowed]), bearer(TRADE_TOKEN))):
            app = create_app(settings, Services(settings, temporal_env.client, redis, store), run_recorder=False)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                signal = make_signal(order_type="limit", limit_price="100.00").model_dump(mode="json", exclude_none=True)
                raw = json.dumps(signal)
                plain = await client.post("/signals", content=raw, headers={**headers, "Content-Type": "text/plain"})
                assert plain.status_code == 415, plain.text
                form = await client.post("/signals", data={"signal": raw}, headers=headers)
                assert form.status_code == 415, form.text
                no_type = await client.post("/signals", content=raw, headers=headers)
                assert no_type.status_code == 415, no_type.text
                for origin in ("https://evil.example", "null", "http://localhost:3000"):
                    foreign = await client.post("/signals", json=signal, headers={**headers, "Origin": origin})
                    assert foreign.status_code == 403 and "Origin" in foreign.json()["detail"], foreign.text
                    amend = await client.patch("/orders/order-x", json={"quantity": "1"},
                                               headers={**headers, "Origin": origin})
                    assert amend.status_code == 403
                # Nothing was started by the refused requests.
                missing = await client.get(f"/orders/order-{signal['signal_id']}", headers=bearer(READ_TOKEN))
                assert missing.status_code == 404
                # No CORS: a foreign page is never told it may read an answer.
                read = await client.get("/healthz", headers={"Origin": "https://evil.example"})
                assert "access-control-allow-origin" not in read.headers
                # JSON with a charset, an allowed Origin, and a cancel without a body are fine.
                ok = await client.post("/signals", content=raw, headers={
                    **headers, "Content-Type": "application/json; charset=utf-8", "Origin": allowed})
                assert ok.status_code == 202, ok.text
                bodiless = await client.post(f"/orders/order-{signal['signal_id']}-none/cancel", headers=headers)
                assert bodiless.status_code == 404, bodiless.text
    finally:
        store.close()


async def test_a_token_past_its_requests_per_minute_gets_429_and_others_are_unaffected(stack_settings, temporal_env,
                                                                                       redis, tmp_path):
    settings = auth_settings(stack_settings)
    tokens = settings.service.model_dump(mode="json")["api_tokens"]
    tokens["reader"] = {"token": READ_TOKEN, "scopes": ["read"], "requests_per_minute": 3}
    tokens["trader"] = {"token": TRADE_TOKEN, "scopes": ["read", "trade"]}
    settings = auth_settings(stack_settings, api_tokens=tokens)
    store = DuckDBStore(str(tmp_path / "limits.duckdb"))
    app = create_app(settings, Services(settings, temporal_env.client, redis, store), run_recorder=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            answers = [(await client.get("/positions", headers=bearer(READ_TOKEN))) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429]
            assert 1 <= int(answers[-1].headers["retry-after"]) <= 20 and READ_TOKEN not in answers[-1].text
            others = [(await client.get("/positions", headers=bearer(TRADE_TOKEN))).status_code for _ in range(5)]
            assert others == [200] * 5
            assert (await client.get("/healthz")).status_code == 200  # probes are not counted against anyone
            spec = (await client.get("/openapi.json", headers=bearer(TRADE_TOKEN))).json()
            assert "429" in spec["paths"]["/positions"]["get"]["responses"]
    finally:
        store.close()


def test_rate_limit_refills_evenly_over_the_minute():
    from workers.api_security import RateLimit

    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])
    assert all(limit.take() == 0 for _ in range(60)) and limit.take() == pytest.approx(1.0)
    now[0] += 0.5
    assert limit.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert limit.take() == 0 and limit.take() > 0


def test_token_checks_compare_digests_of_every_token(stack_settings):
    book = TokenBook(auth_settings(stack_settings).service)
    assert book.scopes_of(READ_TOKEN.encode()) == {"read"}
    assert book.scopes_of(TRADE_TOKEN.encode()) == {"trade"}
    assert book.scopes_of(READ_TOKEN[:-1].encode()) is None and book.scopes_of(b"") is None
    assert all(len(digest) == 32 for digest, _, _ in book.entries)  # SHA-256: lengths never differ


def test_short_or_spaced_tokens_and_bad_scopes_are_refused_at_load(tmp_path):
    def load(block: str, env: dict[str, str]):
        path = tmp_path / "c.yaml"
        path.write_text(f"service:\n  api_tokens:\n{block}")
        return load_settings(path, env=env)

    cases = [("    a: {token: '${T}', scopes: [read]}\n", {"T": "short-token-1234"}, "shorter than 32"),
             ("    a: {token: '${T}', scopes: [read]}\n", {"T": "x" * 20 + " " + "y" * 20}, "without spaces"),
             ("    a: {token: '${T}', scopes: [admin]}\n", {"T": "x" * 40}, "scopes"),
             ("    a: {token: '${T}', scopes: []}\n", {"T": "x" * 40}, "scopes"),
             ("    a: {scopes: [read]}\n", {}, "token: required key is missing"),
             ("    a: {token: '${T}', scopes: [read]}\n    b: {token: '${T}', scopes: [trade]}\n", {"T": "x" * 40},
              "share one token")]
    for block, env, expected in cases:
        with pytest.raises(ConfigError) as refused:
            load(block, env)
        assert expected in str(refused.value), str(refused.value)
        for value in env.values():
            assert value not in str(refused.value)  # never echoed
    unset = load("    a: {token: '${T:-}', scopes: [read]}\n", {})
    assert unset.service.api_tokens["a"].token is None and unset.service.active_tokens() == {}
    origins = tmp_path / "o.yaml"
    for bad in ("desk.example.com", "https://desk.example.com/app", "*"):
        origins.write_text(f"service:\n  allowed_origins: ['{bad}']\n")
        with pytest.raises(ConfigError, match=r"service\.allowed_origins\.0"):
            load_settings(origins, env={})


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "api.example.com",
                                            "trading-order-management.development.svc.cluster.local"))


def test_api_refuses_to_serve_beyond_loopback_without_a_token(stack_settings, tmp_path):
    settings = stack_settings.with_overrides(service={**stack_settings.service.model_dump(mode="json"),
                                                      "bind": "0.0.0.0"})  # service.bind: where it listens
    path = tmp_path / "open.yaml"
    path.write_text(settings.to_yaml())
    result = run_tom(path, "api", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "non-loopback address '0.0.0.0'" in lines[0] and "service.api_tokens" in lines[0], lines


@pytest.fixture
def auth_api(stack_settings, tmp_path, redis):
    """`tom worker` and `tom api` with tokens from the environment, on loopback."""
    settings = auth_settings(stack_settings)
    raw = settings.to_yaml().replace(READ_TOKEN, "${TOM_TEST_READ_TOKEN}").replace(TRADE_TOKEN, "${TOM_TEST_TRADE_TOKEN}")
    path = tmp_path / "auth.yaml"
    path.write_text(raw)
    assert READ_TOKEN not in raw and TRADE_TOKEN not in raw
    env = {"TOM_TEST_READ_TOKEN": READ_TOKEN, "TOM_TEST_TRADE_TOKEN": TRADE_TOKEN}
    os.environ.update(env)  # the children inherit it
    worker = tom_process(path, "worker", log_path=tmp_path / "worker.log")
    api = tom_process(path, "api", log_path=tmp_path / "api.log")
    url = f"http://127.0.0.1:{settings.service.port}"
    try:
        wait_for_http(f"{url}/healthz", proc=api)
        yield url, path
    finally:
        for name in env:
            os.environ.pop(name, None)
        stop_api(api, tmp_path / "api.log")
        stop_process(worker)
        logs = (tmp_path / "api.log").read_text() + (tmp_path / "worker.log").read_text()
        assert READ_TOKEN not in logs and TRADE_TOKEN not in logs and WRONG_TOKEN not in logs
        assert "API authentication: tokens reader, trader" in logs


def test_cli_sends_tom_api_token(auth_api):
    url, path = auth_api
    signal = make_signal(order_type="limit", limit_price="100.00")
    posted = httpx.post(f"{url}/signals", json=signal.model_dump(mode="json", exclude_none=True),
                        headers=bearer(TRADE_TOKEN))
    assert posted.status_code == 202, posted.text

    refused = run_tom(path, "orders", "--json", env={"TOM_API_TOKEN": ""})
    assert refused.returncode == 1 and "401" in refused.stderr and "TOM_API_TOKEN" in refused.stderr, refused.stderr
    wrong = run_tom(path, "report", "--json", env={"TOM_API_TOKEN": WRONG_TOKEN})
    assert wrong.returncode == 1 and "401" in wrong.stderr and WRONG_TOKEN not in wrong.stderr + wrong.stdout
    listed = run_tom(path, "orders", "--json", env={"TOM_API_TOKEN": READ_TOKEN})
    assert listed.returncode == 0, listed.stderr
    report = run_tom(path, "report", "--json", env={"TOM_API_TOKEN": READ_TOKEN})
    assert report.returncode == 0 and "fill_rate" in report.stdout, report.stderr
    scoped = run_tom(path, "orders", env={"TOM_API_TOKEN": TRADE_TOKEN})
    assert scoped.returncode == 1 and "403" in scoped.stderr and "read" in scoped.stderr, scoped.stderr


def test_api_fuzzed_with_authentication_on(auth_api):
    """Schemathesis against the API with tokens on: no 5xx, every answer documented, and every
    protected operation refuses a request without its token (schemathesis' auth checks)."""
    url, _ = auth_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=bearer(READ_TOKEN))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        token = TRADE_TOKEN if operation.method.upper() in ("POST", "PATCH") else READ_TOKEN

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck),
                             phases=[Phase.explicit, Phase.generate])
        def check(case):
            case.call_and_validate(headers=bearer(token), excluded_checks=[positive_data_acceptance])

        check()
