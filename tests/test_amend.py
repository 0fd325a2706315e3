"""Validation, amends and start_at through real OrderWorkflows (Temporal dev server, Redis, the
simulated venue; the exchange emulator over the real ccxt client for Binance):

- the main denial reasons, each with its reason on the denied order;
- an amend is validated in full before anything reaches the venue; a refusal is the update's error
  and leaves the order exactly as it was (no transition, no venue call);
- a Binance amend under the venue's minimum notional is refused and the order stays live; a
  replacement the venue still refuses puts the original terms back instead of losing the order;
- amends during a start_at wait apply before the first placement, answered at once; prices are read
  again after the wait.
"""
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from temporalio.client import WorkflowUpdateFailedError

from oms.models import OrderSnapshot, OrderState
from tests.conftest import direct_settings
from tests.test_api import api_url  # noqa: F401  (fixture: a `tom worker` and `tom api` process)
from tests.helpers import make_signal, start_order
from tests.test_direct_execution import direct_worker
from tests.test_workflow_lifecycle import states, venue_orders, wait_for_state
from workers.worker import build_worker

S = OrderState
D = Decimal


def limited(settings, **limits):
    return settings.with_overrides(account_limits={**settings.account_limits.model_dump(mode="json"), **limits})


async def refused(handle, request: dict) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update("amend_order", request, result_type=OrderSnapshot)
    return str(failure.value.cause)


async def test_main_denial_reasons_through_the_workflow(temporal_env, fast_settings, redis, task_queue):
    settings = limited(fast_settings, max_order_value=1000, min_order_size=10)
    cases = {
        "above_max_order_value": make_signal(symbol="ETH/BTC", quantity="1000"),  # 50 BTC, ~3M USDT
        "below_min_order_size": make_signal(symbol="ETH/BTC", quantity="0.003"),  # ~9 USDT, 0.00015 BTC
        "reference_price_far": make_signal(symbol="BTC/USDT", side="sell", quantity="1", reference_price="600"),
        "algo_not_supported": make_signal(quantity="0.1", execution={"algo": "twap", "slices": 4, "duration_s": 60}),
        "limit_outside_collar": make_signal(quantity="0.0002", order_type="limit", limit_price="80000.00",
                                            symbol="BTC/USDT"),
        "lot_size": make_signal(quantity="0.00001", symbol="ETH/USDT"),
        "below_min_notional": make_signal(symbol="XRP/USDT", quantity="0.1"),
        "unknown_symbol": make_signal(symbol="NOPE/USDT"),
        "unknown_exchange": make_signal(exchange="nowhere"),
    }
    async with await build_worker(temporal_env.client, settings, redis):
        handles = {reason: await start_order(temporal_env.client, task_queue, sig) for reason, sig in cases.items()}
        results = {reason: await handle.result() for reason, handle in handles.items()}
        # 600 USDT of ETH/BTC: valued in USDT through BTC/USDT, inside both limits, traded.
        ok = await (await start_order(temporal_env.client, task_queue,
                                      make_signal(symbol="ETH/BTC", quantity="0.2"))).result()
    for reason, snap in results.items():
        assert snap.state == S.DENIED and snap.reason.startswith(reason), (reason, snap.reason)
        assert snap.filled_quantity == 0
    assert ok.state == S.FILLED, ok.reason
    assert "USDT" in results["above_max_order_value"].reason
    assert "runs no execution algorithm" in results["algo_not_supported"].reason
    assert await redis.get("sim:requests") in (b"1", "1")  # only the ETH/BTC order reached the venue


async def test_an_amend_beyond_the_limits_is_refused_and_changes_nothing(temporal_env, fast_settings, redis, task_queue):
    settings = limited(fast_settings, max_order_value=1000)
    async with await build_worker(temporal_env.client, settings, redis):
        handle = await start_order(temporal_env.client, task_queue, make_signal(
            symbol="BTC/USDT", quantity="0.0002", order_type="limit", limit_price="55000.00"))
        before = await wait_for_state(handle, {S.ACCEPTED})
        requests_before = await redis.get("sim:requests")
        reasons = [await refused(handle, {"quantity": "10"}),
                   await refused(handle, {"limit_price": "70000"}),
                   await refused(handle, {"quantity": "0.000205"}),
                   await refused(handle, {"quantity": "1e30"})]
        # By signal: refused the same way, and the order stays as it was.
        await handle.signal("amend", {"quantity": "10"})
        await handle.signal("amend", {"limit_price": "70000"})
        await asyncio.sleep(1.0)
        after = await handle.query("status", result_type=OrderSnapshot)
        assert await redis.get("sim:requests") == requests_before  # nothing reached the venue
        accepted = await handle.execute_update("amend_order", {"limit_price": "54000"}, result_type=OrderSnapshot)
        await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
    assert "above_max_order_value" in reasons[0] and "USDT" in reasons[0]
    assert "limit_outside_collar" in reasons[1]
    assert "lot_size" in reasons[2]
    assert "quantity" in reasons[3] and "not a plausible value" in reasons[3]  # refused as the request is parsed
    assert after.model_dump(exclude={"updated_at"}) == before.model_dump(exclude={"updated_at"})
    assert (after.quantity, after.limit_price, after.state) == (D("0.0002"), D("55000.00"), S.ACCEPTED)
    assert accepted.limit_price == D("54000") and accepted.quantity == D("0.0002")
    orders = await venue_orders(redis, before.client_order_id)
    assert [D(o["quantity"]) for o in orders] == [D("0.0002")]


@pytest.mark.parametrize("venue", ["binance"])
async def test_a_binance_amend_under_the_minimum_notional_is_refused_and_the_order_stays_live(
        venue, temporal_env, stack_settings, emulators, redis, task_queue):
    settings = direct_settings(stack_settings, emulators, (venue,), direct={"poll_interval_ms": 600_000})
    async with direct_worker(temporal_env.client, settings, redis):
        handle = await start_order(temporal_env.client, task_queue, make_signal(
            quantity="0.02", order_type="limit", limit_price="1500.00", exchange=venue))
        live = await wait_for_state(handle, {S.ACCEPTED})
        reason = await refused(handle, {"quantity": "0.003"})  # 4.5 USDT: under the venue's 5 USDT
        snap = await handle.query("status", result_type=OrderSnapshot)
        venue_orders_now = emulators[venue].orders()
        await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
    assert "below_min_notional" in reason
    assert snap.state == S.ACCEPTED and snap.quantity == D("0.02") and snap.client_order_id == live.client_order_id
    mine = [o for o in venue_orders_now if o["client_order_id"].startswith(handle.id)]
    assert [(o["client_order_id"], o["status"]) for o in mine] == [(live.client_order_id, "new")]


async def test_a_replacement_the_venue_refuses_puts_the_original_terms_back(
        temporal_env, stack_settings, emulators, redis, task_queue):
    settings = direct_settings(stack_settings, emulators, ("binance",), direct={"poll_interval_ms": 600_000})
    async with direct_worker(temporal_env.client, settings, redis):
        handle = await start_order(temporal_env.client, task_queue, make_signal(
            quantity="0.02", order_type="limit", limit_price="1500.00", exchange="binance"))
        await wait_for_state(handle, {S.ACCEPTED})
        emulators["binance"].fault(kind="reject", endpoints=["create"], count=1)
        reason = await refused(handle, {"limit_price": "1490.00"})
        snap = await handle.query("status", result_type=OrderSnapshot)
        venue_orders_now = emulators["binance"].orders()
        cached_before_cancel = await redis.get(f"order:{handle.id}")
        final = await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
    assert "venue refused the amended replacement" in reason and "original terms" in reason
    assert snap.state == S.ACCEPTED and (snap.quantity, snap.limit_price) == (D("0.02"), D("1500.00"))
    mine = {o["client_order_id"]: o for o in venue_orders_now if o["client_order_id"].startswith(handle.id)}
    live = [cid for cid, o in mine.items() if o["status"] == "new"]
    assert live == [snap.client_order_id] and D(mine[snap.client_order_id]["price"]) == D("1500")
    assert final.state == S.CANCELLED
    tail = [(t.state, t.reason or "") for t in snap.transitions][-2:]
    assert tail[0][0] == S.PENDING_AMEND and "venue refused the amended replacement" in tail[0][1]
    assert tail[1][0] == S.ACCEPTED and "original terms placed again" in tail[1][1]
    cached = OrderSnapshot.model_validate_json(cached_before_cancel)  # what the API and the cache show
    assert (cached.client_order_id, cached.limit_price) == (snap.client_order_id, D("1500.00"))


async def test_amends_during_a_start_at_wait_apply_before_placement(temporal_env, order_worker, redis, task_queue):
    start_at = datetime.now(timezone.utc) + timedelta(seconds=4)
    handle = await start_order(temporal_env.client, task_queue, make_signal(
        symbol="BTC/USDT", quantity="0.001", execution={"start_at": start_at.isoformat()}))
    await wait_for_state(handle, {S.VALIDATED})
    began = time.monotonic()
    amended = await handle.execute_update("amend_order", {"quantity": "0.002"}, result_type=OrderSnapshot)
    answered_in = time.monotonic() - began
    reason = await refused(handle, {"quantity": "0.0020001"})  # off the lot size
    await handle.signal("amend", {"quantity": "0.003"})
    final = await handle.result()
    assert answered_in < 3 and amended.quantity == D("0.002") and amended.state == S.VALIDATED
    assert "lot_size" in reason
    assert final.state == S.FILLED and final.quantity == final.filled_quantity == D("0.003"), states(final)
    orders = await venue_orders(redis, final.client_order_id)
    assert [D(o["quantity"]) for o in orders] == [D("0.003")]  # placed once, already amended
    submitted = next(t.at for t in final.transitions if t.state == S.SUBMITTED)
    assert submitted >= start_at


def test_patch_during_a_start_at_wait_answers_at_once_over_http(api_url):
    import httpx

    from tests.test_api import wait_state

    start_at = datetime.now(timezone.utc) + timedelta(seconds=5)
    signal = make_signal(symbol="BTC/USDT", quantity="0.001", execution={"start_at": start_at.isoformat()})
    assert httpx.post(f"{api_url}/signals", json=signal.model_dump(mode="json", exclude_none=True)).status_code == 202
    wait_state(api_url, signal.workflow_id, {"validated"})
    began = time.monotonic()
    amended = httpx.patch(f"{api_url}/orders/{signal.workflow_id}", json={"quantity": "0.002"}, timeout=60)
    assert amended.status_code == 200 and time.monotonic() - began < 5, amended.text
    assert amended.json()["quantity"] == "0.002" and amended.json()["state"] == "validated"
    shown = httpx.get(f"{api_url}/orders/{signal.workflow_id}").json()
    assert shown["quantity"] == "0.002" and shown["state"] == "validated"  # the API shows the new terms
    refused_ = httpx.patch(f"{api_url}/orders/{signal.workflow_id}", json={"quantity": "1e30"}, timeout=60)
    # Refused by the workflow's validation (409), or by the API's own input bounds (422) where it has them.
    assert refused_.status_code in (409, 422), refused_.text
    assert refused_.status_code == 422 or "out_of_bounds" in refused_.json()["detail"]
    final = wait_state(api_url, signal.workflow_id, {"filled"}, timeout=30)
    assert final["quantity"] == final["filled_quantity"] == "0.002"


async def test_prices_are_read_again_after_a_start_at_wait(temporal_env, order_worker, task_queue):
    start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
    handle = await start_order(temporal_env.client, task_queue, make_signal(
        symbol="BTC/USDT", quantity="0.001", execution={"start_at": start_at.isoformat()}))
    final = await handle.result()
    assert final.state == S.FILLED, final.reason
    events = [e async for e in handle.fetch_history_events()]
    timer_fired = next(i for i, e in enumerate(events) if e.HasField("timer_fired_event_attributes"))
    read_after_wait = []
    for event in events[timer_fired:]:
        if event.HasField("marker_recorded_event_attributes"):
            details = event.marker_recorded_event_attributes.details
            data = b"".join(p.data for p in details["data"].payloads) if "data" in details else b""
            if b"read_prices" in data:
                result = json.loads(details["result"].payloads[0].data)
                read_after_wait.append(result)
    assert len(read_after_wait) == 1, "prices must be read once after the wait, before placing"
    prices = read_after_wait[0]
    mid = (D(prices["bid"]) + D(prices["ask"])) / 2
    assert final.reference_price == mid  # the market order was priced from the fresh read


# --- property, through the workflow: refused with a reason, or carried out as asked -------------
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

from oms.validation import DenialReason  # noqa: E402
from tests.test_workflow_lifecycle import touch  # noqa: E402

REASONS = tuple(r.value for r in DenialReason)


@st.composite
def workflow_cases(draw):
    side = draw(st.sampled_from(["buy", "sell"]))
    value_usdt = draw(st.sampled_from([3, 20, 200, 900, 5000]))
    quantity = (D(value_usdt) / D(60000)).quantize(D("0.00001")) or D("0.00001")
    resting = draw(st.integers(0, 2)) > 0
    signal = {"symbol": "BTC/USDT", "side": side, "quantity": str(quantity)}
    if resting:  # a limit that rests: 5 % away from the market, on the passive side
        signal.update(order_type="limit", limit_price=str(D("57000.00") if side == "buy" else D("63000.00")))
    if draw(st.integers(0, 4)) == 4:
        signal["reference_price"] = draw(st.sampled_from(["600", "60000"]))
    if draw(st.integers(0, 3)) == 3:  # timing: placed no earlier than asked
        signal["execution"] = {"start_at": "+2s"}
    amend = {}
    if resting:
        factor = draw(st.sampled_from([D(2), D(100), D("1.000001"), None]))
        price = draw(st.sampled_from(["56000.00", "70000.00", "50000.00", "57000.005", "62000.00", None]))
        if factor is not None:
            amend["quantity"] = str(quantity * factor)
        if price is not None or not amend:
            amend["limit_price"] = price or "56500.00"
    return signal, amend


@hsettings(max_examples=10, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=workflow_cases())
async def test_workflow_orders_and_amends_are_refused_with_a_reason_or_done_as_asked(
        temporal_env, fast_settings, redis, task_queue, case):
    signal_fields, amend = case
    start_at = None
    if "execution" in signal_fields:
        start_at = datetime.now(timezone.utc) + timedelta(seconds=2)
        signal_fields = {**signal_fields, "execution": {"start_at": start_at.isoformat()}}
    settings = limited(fast_settings, max_order_value=1000, min_order_size=10)
    async with await build_worker(temporal_env.client, settings, redis):
        handle = await start_order(temporal_env.client, task_queue, make_signal(**signal_fields))
        snap = await wait_for_state(handle, {S.DENIED, S.ACCEPTED, S.FILLED, S.EXPIRED, S.REJECTED})
        if snap.state == S.DENIED:
            assert snap.reason.split(":")[0] in REASONS and snap.filled_quantity == 0
            return
        if start_at is not None:
            assert next(t.at for t in snap.transitions if t.state == S.SUBMITTED) >= start_at
        if signal_fields.get("order_type") != "limit":  # market: within the collar of the venue's price
            final = await handle.result()
            assert final.filled_quantity <= final.quantity == D(signal_fields["quantity"])
            if final.filled_quantity:
                bps = D(repr(settings.orders.max_slippage_bps)) / 10_000
                mid = touch("BTC/USDT", "buy")
                band = mid * (bps + D("0.01"))  # collar plus the price path's move meanwhile
                assert abs(final.average_fill_price - mid) <= band
            return
        before = snap
        if amend:
            try:
                after = await handle.execute_update("amend_order", amend, result_type=OrderSnapshot)
            except WorkflowUpdateFailedError as failure:
                why = str(failure.cause).removeprefix("AmendRefused: ")
                assert why.startswith(REASONS), why
                after = await handle.query("status", result_type=OrderSnapshot)
                assert (after.quantity, after.limit_price, after.state) == (before.quantity, before.limit_price, S.ACCEPTED)
            else:
                assert after.quantity == D(amend.get("quantity", before.quantity))
                assert after.limit_price == D(amend.get("limit_price", before.limit_price))
        final = await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
        orders = await venue_orders(redis, final.client_order_id)
        assert [(D(o["quantity"]), D(o["limit_price"])) for o in orders] == [(final.quantity, final.limit_price)]


async def test_malformed_cancel_and_amend_arguments_are_refused_with_their_reason(
        temporal_env, fast_settings, redis, task_queue):
    """Sent straight through Temporal (not the API): an unknown field, an absurd amount or an
    oversized reason is refused naming the field, never dropped as undecodable; the order is untouched."""
    async with await build_worker(temporal_env.client, fast_settings, redis):
        handle = await start_order(temporal_env.client, task_queue, make_signal(
            symbol="BTC/USDT", quantity="0.0002", order_type="limit", limit_price="55000.00"))
        before = await wait_for_state(handle, {S.ACCEPTED})
        side = await refused(handle, {"side": "sell", "quantity": "0.0003"})
        huge = await refused(handle, {"quantity": "1e30"})
        with pytest.raises(WorkflowUpdateFailedError) as failure:
            await handle.execute_update("cancel_order", {"reason": "x" * 600},
                                        result_type=OrderSnapshot)
        long_reason = str(failure.value.cause)
        # The same arguments as signals: refused in the handler, the order carries on unchanged.
        await handle.signal("amend", {"side": "sell", "quantity": "0.0003"})
        await handle.signal("cancel", {"reason": "x" * 600})
        await handle.signal("amend", {"quantity": "0.0003"})  # a good one after them still applies
        amended = await wait_for_state(handle, {S.ACCEPTED, S.PARTIALLY_FILLED})
        deadline = time.monotonic() + 20
        while amended.quantity != D("0.0003") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            amended = await handle.query("status", result_type=OrderSnapshot)
        await handle.execute_update("cancel_order", {"reason": "done"}, result_type=OrderSnapshot)
    assert "invalid AmendRequest" in side and "side" in side
    assert "invalid AmendRequest" in huge and "quantity" in huge
    assert "invalid CancelRequest" in long_reason and "reason" in long_reason
    assert before.quantity == D("0.0002")
    assert amended.quantity == D("0.0003") and amended.side == before.side and not amended.is_terminal
