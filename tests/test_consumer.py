"""The signal consumer under failure, concurrency and hostile input; fills and positions end to end.

All real: a Temporal dev server, a redis-server, `tom consume` subprocesses, DuckDB.
"""
import asyncio
import json
import os
import signal as signals
import string
from collections import Counter, defaultdict
from decimal import Decimal

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from temporalio.service import RPCError

from oms.events import DEAD_LETTER_STREAM, RECORDER_GROUP, SIGNALS_STREAM, order_cache_key
from oms.markets import SIMULATED_SYMBOLS
from oms.models import OrderSnapshot, OrderState
from tests.conftest import stop_process, tom_process
from tests.helpers import dec, executions, make_signal, run_order
from tests.test_workflow_lifecycle import touch
from workers.consumer import SignalConsumer, consumer_lag, ensure_group
from workers.recorder import STREAMS, Recorder
from storage.duckdb import DuckDBStore

GROUP = "order-management"


async def eventually(check, timeout: float, what: str, interval: float = 0.05):
    """Await `check()` (sync or async) until it returns something truthy; return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)


async def publish(redis, payloads: list[str]) -> list[str]:
    """Append each payload as a `signal` entry; returns the entry ids."""
    return [await redis.xadd(SIGNALS_STREAM, {"signal": p}) for p in payloads]


async def workflow_exists(client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
        return True
    except RPCError:
        return False


async def starter_identity(client, workflow_id: str) -> str:
    """The identity of the client that started the workflow (`<pid>@<host>` by default)."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        return event.workflow_execution_started_event_attributes.identity
    raise AssertionError(f"{workflow_id} has no history")


async def lag_is_zero(redis, settings) -> bool:
    return await consumer_lag(redis, settings) == {"lag": 0, "pending": 0}


class RunningConsumer:
    """An in-process SignalConsumer on its own asyncio task (its stats are readable)."""

    def __init__(self, consumer: SignalConsumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(consumer.run(self.stop))

    @property
    def handled(self) -> int:
        s = self.consumer.stats
        return s.started + s.duplicates + s.dead_lettered

    async def wait_handled(self, count: int, timeout: float = 30) -> None:
        def done():
            assert not self.task.done(), f"consumer died: {self.task.exception()!r}"
            return self.handled >= count
        await eventually(done, timeout, f"{count} entries handled ({self.consumer.stats})")

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


# --- 1a: a consumer killed between the workflow start and XACK ---------------------------------

async def test_consumer_killed_between_start_and_ack_is_reclaimed_as_a_duplicate(
        temporal_env, order_worker, fast_settings, config_file, redis, tmp_path):
    """A `tom consume` process starts a signal's workflow and dies before acknowledging the entry;
    a second consumer reclaims the pending entry with XAUTOCLAIM, finds the workflow already
    there (a duplicate), acknowledges it; the same signal delivered 3 times makes one order.

    Deterministic window: Redis refuses XACK to this connection's user (ACL `-xack`), so the first
    consumer does everything up to the acknowledgement, its XACK fails (NOPERM: it logs and keeps
    running with the entry pending), and only then is it SIGKILLed. Its log proves the XACK was
    attempted and refused; the workflow's start event names its pid as the starter.
    """
    signal = make_signal(quantity="0.05")
    client = temporal_env.client
    await publish(redis, [signal.model_dump_json()])
    await redis.execute_command("ACL", "SETUSER", "default", "-xack")
    log_path = tmp_path / "doomed.log"
    doomed = tom_process(config_file, "consume", "--name", "doomed", log_path=log_path)
    try:
        await eventually(lambda: workflow_exists(client, signal.workflow_id), 30, "the first consumer's start")
        refused = "no permissions to run the 'xack' command"
        await eventually(lambda: refused in log_path.read_text(), 30, "the refused XACK in the consumer log")
        os.killpg(doomed.pid, signals.SIGKILL)
        doomed.wait(10)
    finally:
        await redis.execute_command("ACL", "SETUSER", "default", "+@all")
        stop_process(doomed)
    pending = await redis.xpending(SIGNALS_STREAM, GROUP)
    assert pending["pending"] == 1 and pending["consumers"] == [{"name": "doomed", "pending": 1}]
    assert (await starter_identity(client, signal.workflow_id)).startswith(f"{doomed.pid}@")

    await publish(redis, [signal.model_dump_json()] * 2)  # delivered twice more
    messaging = fast_settings.messaging.model_dump(mode="json")
    quick = fast_settings.with_overrides(messaging={**messaging, "claim_idle_ms": 200})
    survivor = RunningConsumer(SignalConsumer(client, redis, quick, name="survivor"))
    try:
        await survivor.wait_handled(3)
    finally:
        await survivor.close()
    stats = survivor.consumer.stats
    assert (stats.reclaimed, stats.duplicates, stats.started, stats.dead_lettered) == (1, 3, 0, 0), stats

    snap = await client.get_workflow_handle(signal.workflow_id, result_type=OrderSnapshot).result()
    assert snap.state == OrderState.FILLED and snap.filled_quantity == dec("0.05")
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{signal.workflow_id}'")]
    assert len(runs) == 1
    assert [k async for k in redis.scan_iter("sim:simulation:order:*")] == [
        f"sim:simulation:order:{snap.client_order_id}"]
    assert await consumer_lag(redis, fast_settings) == {"lag": 0, "pending": 0}


# --- 1b: two consumers share one stream ---------------------------------------------------------

@pytest_asyncio.fixture
async def throttled_worker(temporal_env, fast_settings, redis):
    """A real worker on the test's task queue taking at most 50 tasks at a time: 500 orders arrive
    at once, and on 2 shared cores 500 interleaved workflow tasks would each run for seconds."""
    from workers.worker import running_worker

    async with running_worker(temporal_env.client, fast_settings, redis, max_concurrent=50) as worker:
        yield worker


async def test_two_consumer_processes_share_500_signals_each_exactly_once(
        temporal_env, throttled_worker, fast_settings, config_file, redis, tmp_path):
    """Two `tom consume` processes in one consumer group, 500 market signals: 500 orders, each
    started once (one workflow run, one venue order, filled), nothing lost, both consumers
    started some of them (the start events name two different pids), the stream fully acked,
    and both processes stop cleanly on SIGTERM."""
    client, queue = temporal_env.client, fast_settings.temporal.task_queue
    await ensure_group(redis, SIGNALS_STREAM, GROUP)
    procs = [tom_process(config_file, "consume", "--name", name, log_path=tmp_path / f"{name}.log")
             for name in ("left", "right")]
    try:
        # Both are blocked in XREADGROUP before anything is published, so the group shares the stream.
        async def both_reading():
            clients = await redis.client_list()
            return sum(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients) == 2
        await eventually(both_reading, 60, "both consumers blocked reading the stream")
        signals_ = [make_signal(quantity="0.01", side="buy" if i % 2 else "sell") for i in range(500)]
        async with redis.pipeline(transaction=False) as pipe:
            for s in signals_:
                pipe.xadd(SIGNALS_STREAM, {"signal": s.model_dump_json()})
            await pipe.execute()

        async def all_completed():
            done = await client.count_workflows(f"TaskQueue = '{queue}' AND ExecutionStatus = 'Completed'")
            return done.count >= 500
        await eventually(all_completed, 85, "500 completed orders", interval=0.5)
        assert await consumer_lag(redis, fast_settings) == {"lag": 0, "pending": 0}
    finally:
        for proc in procs:
            stop_process(proc)
    assert [p.returncode for p in procs] == [0, 0]

    expected = {s.workflow_id for s in signals_}
    runs = [w async for w in client.list_workflows(f"TaskQueue = '{queue}'")]
    assert len(runs) == 500 and {w.id for w in runs} == expected  # no loss, no second run
    cached = await redis.mget([order_cache_key(i) for i in sorted(expected)])
    assert all(c and OrderSnapshot.model_validate_json(c).state == OrderState.FILLED for c in cached)
    assert len([k async for k in redis.scan_iter("sim:simulation:order:*", count=1000)]) == 500
    assert {f["order_id"] for f in await executions(redis)} == expected

    semaphore = asyncio.Semaphore(32)
    async def identity(workflow_id):
        async with semaphore:
            return await starter_identity(client, workflow_id)
    starters = Counter(i.split("@")[0] for i in await asyncio.gather(*(identity(w) for w in expected)))
    assert set(starters) == {str(p.pid) for p in procs}, starters  # both consumers did part of the work
    print(f"orders started per consumer pid: {dict(starters)}")


# --- 1c: fuzzed bad signals mixed with good ones ------------------------------------------------

KNOWN_EXCHANGES = {"simulation", "binance", "bybit", "quantconnect"}
REQUIRED = ("signal_id", "strategy_id", "symbol", "side", "quantity")
ENUMS = {"side": {"buy", "sell"}, "order_type": {"market", "limit"},
         "time_in_force": {"GTC", "IOC", "FOK", "GTD"}, "intent": {"entry", "exit"}}
printable = st.text(alphabet=string.ascii_letters + string.digits + " _-./:", max_size=12)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)  # JSON has no NaN/Infinity
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(printable, inner, max_size=4), max_leaves=12)
wrong_typed = st.lists(st.integers(), max_size=3) | st.dictionaries(printable, st.integers(), max_size=2)


def base_signal() -> dict:
    return json.loads(make_signal(quantity="0.01").model_dump_json(exclude_none=True))


BAD_KINDS = ("not_json", "not_object", "random_object", "missing", "wrong_type", "absurd", "unknown_symbol",
             "unknown_exchange", "bad_enum", "huge_string", "huge_number", "deep_nesting", "inconsistent")


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


@st.composite
def bad_signal(draw, kind: str | None = None) -> tuple[str, str]:
    """(payload, a fragment its dead-letter reason must contain) for one kind of bad signal."""
    kind = kind or draw(st.sampled_from(BAD_KINDS))
    data = base_signal()
    if kind == "not_json":
        text = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=50))
        try:
            parsed = json.loads(text, parse_constant=_not_json)  # NaN / Infinity are not JSON
        except ValueError:
            return text, "malformed JSON"
        # Text that happens to be JSON: "1", " true ", "{}"...
        return text, "field" if isinstance(parsed, dict) else "a signal is a JSON object"
    if kind == "not_object":
        return json.dumps(draw(json_scalars | st.lists(json_values, max_size=4))), "a signal is a JSON object"
    if kind == "random_object":
        value = draw(st.dictionaries(printable, json_values, max_size=5))
        return json.dumps(value), "field"  # missing required fields, unknown ones
    if kind == "missing":
        field = draw(st.sampled_from(REQUIRED))
        del data[field]
        return json.dumps(data), f"missing field {field}"
    if kind == "wrong_type":
        field = draw(st.sampled_from([*REQUIRED, "order_type", "time_in_force", "execution", "created_at"]))
        # A dict for `execution` may be a valid (empty) timing object: lists only there.
        data[field] = draw(st.lists(st.integers(), max_size=3) if field == "execution" else wrong_typed)
        return json.dumps(data), f"{field}"
    if kind == "absurd":
        field, value = draw(st.sampled_from([
            ("quantity", "0"), ("quantity", "-1"), ("quantity", "1e12"), ("quantity", "1e400"),
            ("quantity", "NaN"), ("quantity", "Infinity"), ("reference_price", "1e15"),
            ("limit_price", "1e13"), ("quantity", "9" * 50_000)]))
        data[field] = value
        if field == "limit_price":
            data["order_type"] = "limit"
        return json.dumps(data), field
    if kind == "unknown_symbol":
        data["symbol"] = draw(st.from_regex(r"[A-Z]{2,6}/[A-Z]{3,5}", fullmatch=True)
                              .filter(lambda s: s not in SIMULATED_SYMBOLS))
        return json.dumps(data), "unknown symbol"
    if kind == "unknown_exchange":
        data["exchange"] = draw(st.text(string.ascii_lowercase, min_size=1, max_size=20)
                                .filter(lambda e: e not in KNOWN_EXCHANGES))
        return json.dumps(data), "unknown exchange"
    if kind == "bad_enum":
        field = draw(st.sampled_from(sorted(ENUMS)))
        data[field] = draw(st.text(max_size=10).filter(lambda v: v.strip() not in ENUMS[field]))
        return json.dumps(data), f"{field}:"
    if kind == "huge_string":
        field = draw(st.sampled_from(["signal_id", "strategy_id", "symbol", "exchange", "unknown_field"]))
        huge = "X" * draw(st.integers(100, 200_000))
        if field == "unknown_field":
            data[huge] = 1
            return json.dumps(data), "unknown field XXX"
        data[field] = huge
        return json.dumps(data), f"{field}:"
    if kind == "huge_number":  # legal JSON, more digits than Python converts by default
        digits = "9" * draw(st.integers(4_400, 20_000))
        return json.dumps(data)[:-1] + f', "quantity": {digits}}}', "malformed JSON"
    if kind == "deep_nesting":  # legal JSON, nested deeper than the parser's recursion limit
        depth = draw(st.integers(50_000, 200_000))
        return "[" * depth + "]" * depth, "malformed JSON"
    variant = draw(st.sampled_from(["limit_without_price", "market_with_price", "gtd_without_expiry",
                                    "naive_expiry"]))
    if variant == "limit_without_price":
        data["order_type"] = "limit"
    elif variant == "market_with_price":
        data.update(order_type="market", limit_price="3000")
    elif variant == "gtd_without_expiry":
        data.update(order_type="limit", limit_price="1000", time_in_force="GTD")
    else:
        data.update(order_type="limit", limit_price="1000", time_in_force="GTD", expire_at="2030-01-01T00:00:00")
    return json.dumps(data), "signal" if variant != "naive_expiry" else "expire_at"


good_signal = st.builds(
    lambda side, qty, strategy: make_signal(side=side, quantity=str(qty), strategy_id=strategy),
    st.sampled_from(["buy", "sell"]), st.decimals("0.01", "0.2", places=2), st.sampled_from(["s1", "s2"]))


@pytest_asyncio.fixture
async def live_consumer(temporal_env, order_worker, fast_settings, redis):
    running = RunningConsumer(SignalConsumer(temporal_env.client, redis, fast_settings, name="fuzz"))
    yield running
    await running.close()


# Every example has one bad signal of each kind plus a few more of any kind, and 0-3 good ones.
@given(bad=st.tuples(*(bad_signal(kind) for kind in BAD_KINDS)).map(list)
       .flatmap(lambda each: st.lists(bad_signal(), max_size=4).map(lambda more: each + more)),
       good=st.lists(good_signal, max_size=3), order=st.randoms(use_true_random=False))
@hypothesis_settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.data_too_large])
async def test_fuzzed_bad_signals_are_dead_lettered_and_good_ones_become_orders(
        bad, good, order, live_consumer, temporal_env, fast_settings, redis):
    """Malformed, mistyped, absurd, unknown and oversized signals mixed with valid ones: each bad
    one lands on `signals.dead` with its exact payload and a reason naming the problem, each good
    one becomes exactly one filled order, and the one consumer stays alive across all examples."""
    entries = [(payload, reason) for payload, reason in bad] + [(s.model_dump_json(), None) for s in good]
    order.shuffle(entries)
    stats = live_consumer.consumer.stats
    before = (live_consumer.handled, stats.started, stats.dead_lettered)
    ids = await publish(redis, [payload for payload, _ in entries])
    await live_consumer.wait_handled(before[0] + len(entries))
    assert (stats.started - before[1], stats.dead_lettered - before[2]) == (len(good), len(bad)), stats
    # Acknowledged only after the dead letters are written (stats count a little earlier).
    await eventually(lambda: lag_is_zero(redis, fast_settings), 10, "every entry acknowledged")

    dead = {fields["message_id"]: fields for _, fields in await redis.xrange(DEAD_LETTER_STREAM)}
    for entry_id, (payload, fragment) in zip(ids, entries):
        if fragment is None:
            assert entry_id not in dead, dead[entry_id]["reason"]
            continue
        assert entry_id in dead, f"bad signal not dead-lettered: {payload[:200]!r}"
        letter = dead[entry_id]
        assert letter["payload"] == payload
        reason = letter["reason"]
        assert fragment in reason and len(reason) < 2000 and "Traceback" not in reason, reason
    client = temporal_env.client
    snaps = await asyncio.wait_for(asyncio.gather(*(
        client.get_workflow_handle(s.workflow_id, result_type=OrderSnapshot).result() for s in good)), 30)
    assert [s.state for s in snaps] == [OrderState.FILLED] * len(good)
    assert [s.filled_quantity for s in snaps] == [g.quantity for g in good]
    assert not live_consumer.task.done()


# --- 1d: executions and positions ---------------------------------------------------------------

def fee_in_quote(fill: dict) -> Decimal:
    """Order and position fees are kept in the quote currency: a fee in the base asset is valued
    at its fill price (the simulated venue charges the quote currency)."""
    fee = dec(fill["fee"])
    return fee * dec(fill["price"]) if fill["fee_currency"] == fill["symbol"].split("/")[0] else fee


async def test_every_fill_is_recorded_once_and_positions_match_the_fills(
        temporal_env, order_worker, task_queue, redis, tmp_path):
    """Buys and sells on two symbols for two strategies, with multi-level market fills and an IOC
    partially filled: each fill is on `executions` once and in DuckDB `fills` once (catch-up run
    twice), fills add up to each order's filled quantity, and `positions` (net quantity, average
    buy and sell price, fees, fill count per strategy and symbol) equals what the fills imply."""
    ioc_price = (touch("ETH/USDT", "buy") * Decimal("1.00002")).quantize(Decimal("0.01"))
    plan = [
        make_signal(strategy_id="alpha", symbol="ETH/USDT", side="buy", quantity="120"),  # walks 3 levels
        make_signal(strategy_id="alpha", symbol="ETH/USDT", side="sell", quantity="30"),
        make_signal(strategy_id="alpha", symbol="SOL/USDT", side="buy", quantity="500"),  # 2 levels
        make_signal(strategy_id="alpha", symbol="SOL/USDT", side="sell", quantity="20"),
        make_signal(strategy_id="beta", symbol="ETH/USDT", side="buy", quantity="60", order_type="limit",
                    limit_price=str(ioc_price), time_in_force="IOC"),  # one level within the limit
        make_signal(strategy_id="beta", symbol="ETH/USDT", side="sell", quantity="5"),
        make_signal(strategy_id="beta", symbol="SOL/USDT", side="sell", quantity="100"),
        make_signal(strategy_id="beta", symbol="SOL/USDT", side="buy", quantity="7.5"),
    ]
    snaps = await asyncio.gather(*(run_order(temporal_env.client, task_queue, s) for s in plan))
    by_id = {s.order_id: s for s in snaps}
    ioc = by_id[plan[4].workflow_id]
    assert ioc.state == OrderState.EXPIRED and 0 < ioc.filled_quantity < ioc.quantity, ioc
    assert all(s.state == OrderState.FILLED for s in snaps if s is not ioc), [s.state for s in snaps]

    published = await executions(redis)
    ids = [f["fill_id"] for f in published]
    assert len(ids) == len(set(ids))
    per_order = Counter(f["order_id"] for f in published)
    assert max(per_order.values()) >= 2  # some order filled in several pieces
    for snap in snaps:
        mine = [f for f in published if f["order_id"] == snap.order_id]
        assert sum((dec(f["quantity"]) for f in mine), Decimal(0)) == snap.filled_quantity
        assert sum((fee_in_quote(f) for f in mine), Decimal(0)) == snap.fees

    store = DuckDBStore(tmp_path / "positions.duckdb")
    try:
        for stream in STREAMS:
            await ensure_group(redis, stream, RECORDER_GROUP)
        recorder = Recorder(redis, store)
        assert await recorder.catch_up() > 0
        assert await recorder.catch_up() == 0  # nothing new: nothing written twice
        rows = store.fills()
        assert sorted((r["fill_id"], r["quantity"], r["price"], r["fee"]) for r in rows) == sorted(
            (f["fill_id"], dec(f["quantity"]), dec(f["price"]), dec(f["fee"])) for f in published)
        positions = {(p["strategy_id"], p["symbol"]): p for p in store.positions()}
    finally:
        store.close()

    expected = defaultdict(lambda: {"net": Decimal(0), "fees": Decimal(0), "fills": 0,
                                    "buy": [Decimal(0), Decimal(0)], "sell": [Decimal(0), Decimal(0)]})
    for f in published:
        e = expected[(f["strategy_id"], f["symbol"])]
        qty, price = dec(f["quantity"]), dec(f["price"])
        e["net"] += qty if f["side"] == "buy" else -qty
        e["fees"] += fee_in_quote(f)
        e["fills"] += 1
        e[f["side"]][0] += qty * price
        e[f["side"]][1] += qty
    assert set(positions) == {(s, y) for s in ("alpha", "beta") for y in ("ETH/USDT", "SOL/USDT")}
    for key, e in expected.items():
        p = positions[key]
        assert (p["net_quantity"], p["fees"], p["fills"]) == (e["net"], e["fees"], e["fills"]), key
        for side in ("buy", "sell"):
            assert p[f"average_{side}_price"] == pytest.approx(float(e[side][0] / e[side][1]), rel=1e-12), key
    assert positions[("alpha", "ETH/USDT")]["net_quantity"] == Decimal("90")
    assert positions[("beta", "ETH/USDT")]["net_quantity"] == ioc.filled_quantity - 5
