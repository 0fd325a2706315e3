"""How the worker runs workflow code: `temporal.workflow_threads` (workers/worker.py), where the
activations run, and the shared pydantic payload converter (workers/payload_converter.py).

0 (the default) runs them inline on the worker's event loop; N on a pool of N threads. Both must
carry an order through: the suite's other workers run inline, so the pool is exercised here.
"""
import asyncio
import concurrent.futures
import threading
from decimal import Decimal

import pytest
from pydantic import ValidationError

from oms.models import OrderState
from tests.helpers import make_signal, run_order
from workers.worker import InlineExecutor, activation_executor, running_worker


def load_default_settings():
    from config.settings import load_settings
    from tests.conftest import REPO

    return load_settings(REPO / "config" / "local.yaml", env={})


async def test_inline_executor_runs_on_the_loop_thread_and_hands_back_results_and_errors():
    loop, executor = asyncio.get_running_loop(), InlineExecutor()
    assert await loop.run_in_executor(executor, threading.get_ident) == threading.get_ident()
    assert await asyncio.wrap_future(executor.submit(lambda a, b=0: a + b, 2, b=3)) == 5
    with pytest.raises(ZeroDivisionError):
        await loop.run_in_executor(executor, lambda: 1 / 0)

    def clears_the_running_loop() -> str:  # what a workflow's own loop does when it finishes a step
        asyncio._set_running_loop(None)
        return "ran"

    assert await loop.run_in_executor(executor, clears_the_running_loop) == "ran"
    assert asyncio.get_running_loop() is loop  # restored for the worker's own tasks


def test_the_setting_chooses_the_executor(fast_settings):
    assert fast_settings.temporal.workflow_threads == 0
    assert isinstance(activation_executor(0), InlineExecutor)
    pool = activation_executor(3)
    try:
        assert isinstance(pool, concurrent.futures.ThreadPoolExecutor) and pool._max_workers == 3
        assert pool.submit(threading.get_ident).result() != threading.get_ident()
    finally:
        pool.shutdown()


def test_a_negative_thread_count_is_refused(fast_settings):
    with pytest.raises(ValidationError, match="workflow_threads"):
        fast_settings.with_overrides(temporal={**fast_settings.temporal.model_dump(mode="json"), "workflow_threads": -1})


@pytest.mark.parametrize("threads", [0, 2])
async def test_an_order_fills_with_activations_inline_or_on_threads(temporal_env, fast_settings, redis, task_queue,
                                                                    threads):
    settings = fast_settings.with_overrides(
        temporal={**fast_settings.temporal.model_dump(mode="json"), "workflow_threads": threads})
    async with running_worker(temporal_env.client, settings, redis):
        snap = await run_order(temporal_env.client, task_queue, make_signal(quantity="0.1"))
    assert snap.state == OrderState.FILLED, snap.reason
    assert snap.filled_quantity == Decimal("0.1")


def test_the_production_converter_builds_one_type_adapter_per_type_for_all_workflows():
    """The SDK makes a payload converter per workflow; ours share their pydantic adapters."""
    from oms.models import Signal
    from workers.payload_converter import SharedPydanticPayloadConverter
    from workers.runtime import data_converter

    assert data_converter(load_default_settings()).payload_converter_class is SharedPydanticPayloadConverter
    first, second = SharedPydanticPayloadConverter(), SharedPydanticPayloadConverter()
    payload = first.to_payloads([make_signal(quantity="0.1")])[0]
    assert first.from_payloads([payload], [Signal])[0] == second.from_payloads([payload], [Signal])[0]
    json_first = next(c for c in first.converters.values() if c.encoding == "json/plain")
    json_second = next(c for c in second.converters.values() if c.encoding == "json/plain")
    assert json_first is json_second
    assert json_first._type_adapter.cache_info().currsize >= 1
