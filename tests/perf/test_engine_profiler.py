"""The profiler builds the batches it asks for on the real engine, and leaves the engine as it found it."""
import pytest
import torch

from fleetserve.perf.engine_profiler import EngineProfiler, GridPoint, default_grid


@pytest.fixture
def one_thread():
    # A few tiny steps; two torch threads on a busy 2-core machine can spin for seconds a step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_measured_steps_have_the_requested_shapes(llm, one_thread):
    engine = llm.engine
    free_before = engine.kv_cache.num_free_blocks
    profiler = EngineProfiler(engine, timed_steps=1)
    samples = profiler.measure([GridPoint(3, 40), GridPoint(2, 30, 16, 32)])
    shapes = [(s.prefill_tokens, s.decode_seqs, s.context_tokens, s.prefill_seqs) for s in samples]
    # decodes placed at 40 tokens: the untimed step attends 41 each, the timed one 42;
    # then two decodes at 30 plus a fresh 16-token chunk after 32 computed tokens
    assert shapes == [(0, 3, 3 * 42, 0), (16, 2, 2 * 32 + 48, 1)]
    assert all(s.seconds > 0 for s in samples)
    assert not engine.has_unfinished_requests()
    assert engine.kv_cache.num_free_blocks == free_before


def test_points_that_do_not_fit_are_skipped_with_a_reason(llm):
    profiler = EngineProfiler(llm.engine, timed_steps=1)
    assert profiler.measure([GridPoint(16, 100_000)]) == []
    assert "KV tokens" in profiler.skipped[0][1]


def test_default_grid_respects_the_engine_limits():
    grid = default_grid(max_num_seqs=16, max_batched_tokens=256)
    assert grid and all(p.decode_seqs + (p.prefill_tokens > 0) <= 16 for p in grid)
    assert all(p.decode_seqs + p.prefill_tokens <= 256 for p in grid)
