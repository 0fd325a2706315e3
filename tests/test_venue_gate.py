"""The shared venue gate on a real Redis: order rate in any sliding window, request weight, pause on
429/418, circuit breaker closed -> open -> half-open probe -> closed, shared by every gate instance
(each standing for a worker replica)."""
import asyncio
import time

import pytest

from activities.venues.gate import (
    BACKGROUND,
    BACKGROUND_GRACE_MS,
    PATIENCE_MS,
    GateLimits,
    RequestKind,
    Verdict,
    VenueGate,
    gate_status,
    retry_after_s,
    window_margin_ms,
)
from activities.venues import VenueError
from oms.venue import VenueErrorType
from emulator.traffic import max_in_window


def limits(**overrides) -> GateLimits:
    values = dict(orders=5, window_ms=1000, weight_per_s=1000.0, failure_threshold=3, open_s=1.0,
                  max_wait_ms=5000, probe_timeout_ms=2000)
    values.update(overrides)
    return GateLimits(**values)


async def test_two_replicas_never_exceed_the_order_rate_in_any_window(redis):
    replicas = [VenueGate(redis, "binance", "acct", limits()) for _ in range(2)]
    admitted: list[float] = []

    async def place(gate: VenueGate) -> None:
        await gate.admit(RequestKind.ORDER, 1)
        admitted.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(place(replicas[i % 2]) for i in range(16)))
    elapsed = time.monotonic() - started
    assert len(admitted) == 16
    assert max_in_window(sorted(admitted), 1.0) <= 5
    # 16 orders at 5 per (1 s + margin) need three more windows after the first burst.
    assert elapsed >= 3 * (1 + window_margin_ms(1000) / 1000) - 0.05
    assert sum(g.waits for g in replicas) > 0


async def test_reads_do_not_count_as_orders_but_spend_weight(redis):
    gate = VenueGate(redis, "binance", "acct", limits(weight_per_s=10.0))
    started = time.monotonic()
    for _ in range(10):  # one second of burst
        await gate.admit(RequestKind.OTHER, 1)
    assert gate.waits == 0  # within the weight budget: none waited (how fast Redis answers is bench/'s)
    await gate.admit(RequestKind.OTHER, 5)  # the bucket is empty: half a second to refill 5
    assert gate.waits == 1 and time.monotonic() - started >= 0.45


async def test_a_wait_longer_than_allowed_is_refused_with_its_retry_after(redis):
    gate = VenueGate(redis, "binance", "acct", limits(orders=1, window_ms=2000, max_wait_ms=100))
    await gate.admit(RequestKind.ORDER, 1)
    with pytest.raises(VenueError) as refused:
        await gate.admit(RequestKind.ORDER, 1)
    assert refused.value.kind == VenueErrorType.RATE_LIMITED
    assert 1.5 < refused.value.retry_after_s <= 2.0 + window_margin_ms(2000) / 1000 + 0.001  # +1 ms: strictly after


async def test_a_pause_holds_every_replica_until_it_ends(redis):
    a, b = VenueGate(redis, "bybit", "acct", limits()), VenueGate(redis, "bybit", "acct", limits())
    await a.pause(0.6, "418 banned")
    with pytest.raises(VenueError) as paused:
        await b.admit(RequestKind.OTHER, 1)
    assert paused.value.kind == VenueErrorType.RATE_LIMITED and 0 < paused.value.retry_after_s <= 0.6
    status = await gate_status(redis, "bybit", "acct")
    assert status["paused_for_s"] > 0 and status["pause_reason"] == "418 banned" and status["pauses"] == 1
    await a.pause(0.1, "shorter 429")  # a shorter pause never cuts a longer one short
    assert (await gate_status(redis, "bybit", "acct"))["pause_reason"] == "418 banned"
    await asyncio.sleep(0.65)
    assert await b.admit(RequestKind.OTHER, 1) == Verdict.OK


async def test_breaker_opens_after_consecutive_failures_then_one_probe_closes_it(redis):
    a, b = VenueGate(redis, "binance", "acct", limits()), VenueGate(redis, "binance", "acct", limits())
    await a.failed("timeout")
    await b.failed("timeout")
    await a.succeeded()  # consecutive: a success in between resets the count
    for gate in (a, b, a):
        await gate.admit(RequestKind.OTHER, 1)
        state = await gate.failed("503")
    assert state == "open"
    status = await gate_status(redis, "binance", "acct")
    assert status["circuit"] == "open" and status["opened"] == 1 and "503" in status["last_error"]
    with pytest.raises(VenueError) as refused:
        await b.admit(RequestKind.ORDER, 1)
    assert refused.value.kind == VenueErrorType.CIRCUIT_OPEN and 0 < refused.value.retry_after_s <= 1.0

    await asyncio.sleep(1.05)
    assert (await gate_status(redis, "binance", "acct"))["circuit"] == "half_open"
    assert await a.admit(RequestKind.OTHER, 1) == Verdict.PROBE
    with pytest.raises(VenueError) as second:  # one probe at a time
        await b.admit(RequestKind.OTHER, 1)
    assert second.value.kind == VenueErrorType.CIRCUIT_OPEN
    assert await a.failed("still down") == "open"  # the probe failed: open again, a full period
    assert (await gate_status(redis, "binance", "acct"))["opened"] == 2

    await asyncio.sleep(1.05)
    assert await b.admit(RequestKind.OTHER, 1) == Verdict.PROBE
    await b.succeeded()
    status = await gate_status(redis, "binance", "acct")
    assert status["circuit"] == "closed" and status["failures"] == 0
    assert await a.admit(RequestKind.ORDER, 1) == Verdict.OK


async def test_a_probe_that_never_reports_frees_its_slot(redis):
    gate = VenueGate(redis, "binance", "acct", limits(failure_threshold=1, open_s=0.2, probe_timeout_ms=300))
    await gate.failed("refused")
    await asyncio.sleep(0.25)
    assert await gate.admit(RequestKind.OTHER, 1) == Verdict.PROBE  # ... and its worker dies
    with pytest.raises(VenueError):
        await gate.admit(RequestKind.OTHER, 1)
    await asyncio.sleep(0.35)
    assert await gate.admit(RequestKind.OTHER, 1) == Verdict.PROBE


def test_retry_after_from_headers_and_ban_messages():
    now = 1_700_000_000_000
    assert retry_after_s(429, {"Retry-After": "7"}, "", now) == 7
    assert retry_after_s(418, {}, '{"code":-1003,"msg":"IP banned until 1700000030000."}', now) == 30
    assert retry_after_s(403, {"X-Bapi-Limit-Reset-Timestamp": str(now + 2500)}, "", now) == 2.5
    assert retry_after_s(429, {}, "", now) == 1.0 and retry_after_s(418, {}, "", now) == 60.0


async def test_a_heavy_request_keeps_its_place_against_a_stream_of_light_ones(redis):
    """Weight is reserved in arrival order: light requests arriving after a heavy one that is
    waiting for the bucket wait behind it instead of starving it."""
    gate = VenueGate(redis, "binance", "acct", limits(weight_per_s=20.0, max_wait_ms=300))
    for _ in range(20):
        await gate.admit(RequestKind.OTHER, 1)  # the bucket is empty
    order: list[str] = []

    async def heavy() -> None:
        token = PATIENCE_MS.set(5000)
        try:
            await gate.admit(RequestKind.OTHER, 16)
        finally:
            PATIENCE_MS.reset(token)
        order.append("heavy")

    async def light(i: int) -> None:
        await asyncio.sleep(0.01 * (i + 1))
        try:
            await gate.admit(RequestKind.OTHER, 0.8)
            order.append("light")
        except VenueError:
            order.append("refused")

    started = time.monotonic()
    await asyncio.gather(heavy(), *(light(i) for i in range(10)))
    assert "heavy" in order and "light" not in order[: order.index("heavy")]  # nothing overtook it
    assert order.count("refused") == 10  # behind it, they would wait longer than their patience
    assert time.monotonic() - started > 0.7  # 16 weight at 20 per second (no upper bound: load is bench/'s)


async def test_orders_count_when_they_are_sent_not_when_admitted(redis):
    """An order admitted now but sent later (its request weight is queued) must count in the window
    it is sent in, or sends delayed by weight bunch up into one window."""
    gate = VenueGate(redis, "binance", "acct", limits(orders=3, window_ms=1000, weight_per_s=5.0))
    await gate.admit(RequestKind.OTHER, 5)  # the weight bucket is empty: each order waits 200 ms more
    sent: list[float] = []

    async def place() -> None:
        await gate.admit(RequestKind.ORDER, 1)
        sent.append(time.monotonic())

    await asyncio.gather(*(place() for _ in range(8)))
    assert len(sent) == 8 and max_in_window(sorted(sent), 1.0) <= 3


async def test_a_background_listing_yields_the_weight_to_the_order_path(redis):
    """The poller's heavy listing takes weight only when it is free now, leaving a reserve: an
    order's request arriving while the listing waits for the bucket goes first, without waiting."""
    gate = VenueGate(redis, "binance", "acct", limits(weight_per_s=20.0))
    for _ in range(10):
        await gate.admit(RequestKind.OTHER, 1)  # half the one-second burst is spent
    order: list[tuple[str, float]] = []
    started = time.monotonic()

    async def listing() -> None:
        token = BACKGROUND.set(True)
        try:
            await gate.admit(RequestKind.OTHER, 16)  # needs 16, plus the reserve of 2, free
        finally:
            BACKGROUND.reset(token)
        order.append(("listing", time.monotonic() - started))

    async def order_path() -> None:
        await asyncio.sleep(0.02)  # arrives while the listing waits
        before = gate.waits
        await gate.admit(RequestKind.ORDER, 1)
        order.append(("order", time.monotonic() - started))
        assert gate.waits == before  # admitted at once: nothing reserved ahead of it

    await asyncio.gather(listing(), order_path())
    assert [name for name, _ in order] == ["order", "listing"], order
    # The listing went once 18 units were free again: about 0.45 s of refill at 20 per second.
    assert 0.3 <= dict(order)["listing"] < BACKGROUND_GRACE_MS / 1000, order


async def test_a_background_listing_is_not_starved_by_a_stream_of_orders(redis):
    """Past BACKGROUND_GRACE_MS of yielding, the listing queues in arrival order like any request."""
    gate = VenueGate(redis, "binance", "acct", limits(weight_per_s=20.0, orders=1000, max_wait_ms=10_000))
    done = asyncio.Event()

    async def stream() -> None:  # more than the refill rate: the bucket never has 18 units free again
        while not done.is_set():
            await gate.admit(RequestKind.OTHER, 1.5)
            await asyncio.sleep(0.05)

    streamer = asyncio.create_task(stream())
    await asyncio.sleep(0.3)
    started = time.monotonic()
    token = BACKGROUND.set(True)
    try:
        await gate.admit(RequestKind.OTHER, 16)
    finally:
        BACKGROUND.reset(token)
        done.set()
    await streamer
    waited = time.monotonic() - started
    assert BACKGROUND_GRACE_MS / 1000 <= waited < BACKGROUND_GRACE_MS / 1000 + 2.0, waited
