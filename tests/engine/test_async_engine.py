"""The async engine's front door on the real model: the queue limit counts a request on its way from the
asyncio side into the scheduler, and a shutting-down engine says so with its own error, not a full queue."""
from __future__ import annotations

import asyncio
import threading

import pytest

from fleetserve.engine.async_engine import AsyncLLMEngine, EngineShuttingDownError, QueueFullError
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.engine import LLMEngine
from fleetserve.engine.sampling_params import SamplingParams

PROMPT = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def engine():
    # One sequence at a time, so a second request stays in the waiting queue while the first runs.
    return LLMEngine(EngineConfig(dtype="float32", kv_cache_memory="64MiB", max_num_seqs=1, num_threads=1))


async def _drain(stream) -> None:
    async for _ in stream:
        pass


def test_a_request_moving_into_the_scheduler_counts_against_the_queue(engine, monkeypatch):
    """The engine thread moves a request from the hand-over count into the scheduler's waiting queue; a
    request checked during that move must still see it, or one more than max_queue gets in. The move is
    held open here (a slow add_request) while a third request arrives."""
    aengine = AsyncLLMEngine(engine, max_queue=1)
    entered, release = threading.Event(), threading.Event()
    add_request = engine.add_request

    def slow_add_request(prompt, params, request_id, arrival_time, *rest):
        if request_id == "on-its-way":
            entered.set()
            release.wait(10)
        return add_request(prompt, params, request_id, arrival_time, *rest)

    monkeypatch.setattr(engine, "add_request", slow_add_request)

    async def main() -> None:
        running = aengine.generate(PROMPT, SamplingParams(max_tokens=500, ignore_eos=True), "runner")
        await anext(running)  # it holds the only seat (max_num_seqs 1) for hundreds of steps
        on_its_way = asyncio.create_task(_drain(aengine.generate(PROMPT, SamplingParams(max_tokens=1),
                                                                 "on-its-way")))
        assert await asyncio.to_thread(entered.wait, 30)
        threading.Timer(0.3, release.set).start()
        try:
            with pytest.raises(QueueFullError, match=r"1 requests are already waiting \(max_queue 1\)"):
                await asyncio.wait_for(anext(aengine.generate(PROMPT, SamplingParams(max_tokens=1),
                                                              "one-too-many")), 10)
        finally:
            release.set()
            on_its_way.cancel()
            await running.aclose()
            await asyncio.gather(on_its_way, return_exceptions=True)
            await aengine.shutdown(timeout_s=0)

    asyncio.run(main())
    assert aengine.pending == 0
    assert not aengine.thread.is_alive()
    assert not engine.has_unfinished_requests()


def test_a_shutting_down_engine_refuses_with_its_own_error_not_a_full_queue(engine):
    aengine = AsyncLLMEngine(engine)
    assert aengine.max_queue == EngineConfig.max_queue

    async def main() -> None:
        await aengine.shutdown(timeout_s=0)
        with pytest.raises(EngineShuttingDownError, match="shutting down"):
            await anext(aengine.generate(PROMPT, SamplingParams(max_tokens=1)))

    asyncio.run(main())
    assert not issubclass(EngineShuttingDownError, QueueFullError)
