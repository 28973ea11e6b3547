"""The server steps its engine on the thread that built it (stepping on another thread measured ~2x slower
per step on CPU, see fleetserve.engine.async_engine), and that thread still serves and shuts down."""
from __future__ import annotations

import asyncio
import threading

from fleetserve.api.state import ServerOptions, ServerState
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.sampling_params import SamplingParams


def test_engine_loop_runs_on_the_loading_thread() -> None:
    state = ServerState(ServerOptions(), EngineConfig(dtype="float32", kv_cache_memory="64MiB", max_num_seqs=4,
                                                      num_threads=1))
    state.start_loading()
    assert state.wait_loaded(timeout_s=300), state.load_error
    aengine = state.require_engine()
    loader = state._loader
    assert loader is not None and aengine.thread is loader and loader.is_alive()
    assert aengine.thread is not threading.main_thread()

    async def generate_then_stop() -> list[int]:
        tokens: list[int] = []
        async for out in aengine.generate([1, 2, 3, 4, 5], SamplingParams(max_tokens=3, ignore_eos=True)):
            tokens += out.new_token_ids
        await aengine.shutdown(timeout_s=5)
        return tokens

    assert len(asyncio.run(generate_then_stop())) == 3
    loader.join(5)
    assert not loader.is_alive()
