"""The HTTP API as a real process (`tom api`) beside a real worker process (`tom worker`)."""
import time

import httpx
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings

from tests.conftest import stop_api, stop_process, tom_process, wait_for_http
from tests.helpers import make_signal


@pytest.fixture
def api_url(config_file, stack_settings, tmp_path, redis):  # `redis`: a flushed database, no earlier tests' events
    worker = tom_process(config_file, "worker", "--processes", "1", log_path=tmp_path / "worker.log")
    api = tom_process(config_file, "api", log_path=tmp_path / "api.log")
    url = f"http://127.0.0.1:{stack_settings.service.port}"
    try:
        wait_for_http(f"{url}/healthz", proc=api)
        yield url
    finally:
        stop_api(api, tmp_path / "api.log")
        stop_process(worker)


def wait_state(url, order_id, states, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        response = httpx.get(f"{url}/orders/{order_id}")
        if response.status_code == 200 and response.json()["state"] in states:
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"{order_id} never reached {states}: {response.text}")


def test_order_lifecycle_over_http(api_url):
    signal = make_signal(order_type="limit", limit_price="1000.00", quantity="0.1")
    body = signal.model_dump(mode="json", exclude_none=True)
    first = httpx.post(f"{api_url}/signals", json=body)
    assert first.status_code == 202 and first.json() == {"order_id": signal.workflow_id, "created": True}
    again = httpx.post(f"{api_url}/signals", json=body)
    assert again.status_code == 202 and again.json()["created"] is False

    order = wait_state(api_url, signal.workflow_id, {"accepted"})
    assert order["limit_price"] == "1000.00"

    refused = httpx.patch(f"{api_url}/orders/{signal.workflow_id}", json={"limit_price": "1000.001"})
    assert refused.status_code == 409 and "tick size" in refused.json()["detail"]
    amended = httpx.patch(f"{api_url}/orders/{signal.workflow_id}", json={"limit_price": "1001.00", "quantity": "0.2"})
    assert amended.status_code == 200, amended.text
    assert amended.json()["limit_price"] == "1001.00" and amended.json()["quantity"] == "0.2"

    cancelled = httpx.post(f"{api_url}/orders/{signal.workflow_id}/cancel", json={"reason": "test"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = httpx.post(f"{api_url}/orders/{signal.workflow_id}/cancel", json={})
    assert again.status_code == 409

    bad = httpx.post(f"{api_url}/signals", json={**body, "signal_id": "b1", "side": "long"})
    assert bad.status_code == 422 and "side" in bad.json()["detail"]
    assert httpx.get(f"{api_url}/orders/order-nope").status_code == 404

    deadline = time.time() + 20
    while time.time() < deadline:  # the recorder catches up asynchronously
        page = httpx.get(f"{api_url}/orders", params={"state": "cancelled"}).json()
        # The session's Redis may hold other tests' events, which this API's recorder also stores.
        if signal.workflow_id in [o["order_id"] for o in page["orders"]]:
            break
        time.sleep(0.2)
    assert signal.workflow_id in [o["order_id"] for o in page["orders"]], f"the recorder never caught up: {page}"
    ready = httpx.get(f"{api_url}/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) >= {"temporal", "redis", "database"}
    metrics = httpx.get(f"{api_url}/metrics").text
    assert 'tom_orders{state="cancelled"} 1.0' in metrics and "tom_consumer_lag" in metrics


def test_api_fuzzed_from_its_openapi_schema(api_url):
    """No input makes the API fail: every response is a documented status with a matching body,
    and no error is a 5xx."""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
                             phases=[Phase.explicit, Phase.generate])
        def check(case):
            # Every check but "schema-valid data must be accepted": a well-formed signal can still be
            # refused on business rules (unknown symbol, implausible size), with a clear 422.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
