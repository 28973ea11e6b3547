"""A step-time bound (`max_step_ms`): decodes are served every step, prompts are chunked so the cost model's
prediction stays within the bound, and without a bound the scheduler is unchanged."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.engine.step_budget import prompt_token_room
from fleetserve.perf.model import StepShape
from fleetserve.perf.step_shape import shape_of

from run_checks import assert_run_matches_stepping, step
from scheduler_ops import apply_operation, make_request


class LinearCost:
    def __init__(self, const: float = 0.02, per_prefill_token: float = 1e-3, per_decode: float = 2e-3,
                 per_context: float = 1e-6) -> None:
        self.const, self.per_prefill_token = const, per_prefill_token
        self.per_decode, self.per_context = per_decode, per_context

    def step_time(self, shape: StepShape) -> float:
        return (self.const + self.per_prefill_token * shape.prefill_tokens + self.per_decode * shape.decode_seqs
                + self.per_context * shape.context_tokens)


def test_the_room_is_the_most_prompt_tokens_whose_step_fits():
    cost = LinearCost(const=0.01, per_prefill_token=1e-3, per_decode=0.0, per_context=0.0)
    assert prompt_token_room(cost, 0.1005, 0, 0, 0, room=512, min_chunk=16) == 90
    assert prompt_token_room(cost, 10.0, 0, 0, 0, room=512, min_chunk=16) == 512
    # The step's fixed cost alone overruns the bound: the prompt still gets its minimum chunk.
    slow = LinearCost(const=1.0)
    assert prompt_token_room(slow, 0.1, 4, 400, 0, room=512, min_chunk=16) == 16
    assert prompt_token_room(slow, 0.1, 4, 400, 0, room=8, min_chunk=16) == 8
    assert prompt_token_room(cost, 0.1, 4, 400, 0, room=0, min_chunk=16) == 0


def decoding_scheduler(max_step_ms: float | None, cost: LinearCost, decodes: int = 8) -> Scheduler:
    """`decodes` requests past their prompts, and a 2000-token prompt waiting."""
    config = SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512, max_model_len=4096, max_step_ms=max_step_ms)
    scheduler = Scheduler(config, KVCacheManager(num_blocks=1024, block_size=16), cost)
    for index in range(decodes):
        scheduler.add_request(make_request(f"d{index}", list(range(index, index + 40)), max_tokens=200))
    while any(request.num_output_tokens == 0 for request in scheduler.running) or scheduler.waiting:
        step(scheduler)
    scheduler.add_request(make_request("long", list(range(1000, 3000)), max_tokens=4))
    return scheduler


def test_a_bounded_step_serves_every_decode_and_chunks_the_prompt_within_the_bound():
    cost = LinearCost()
    scheduler = decoding_scheduler(100, cost)
    chunks = []
    while scheduler.requests["long"].num_output_tokens == 0:
        out = scheduler.schedule()
        decoded = {item.request.request_id for item in out.scheduled if item.num_tokens == 1}
        assert decoded == {f"d{index}" for index in range(8)}  # no decode waits for the prompt
        chunks += [item.num_tokens for item in out.scheduled if item.request.request_id == "long"]
        assert cost.step_time(shape_of(out)) <= 0.1
        scheduler.update_from_output(out, {item.request.request_id: 0 for item in out.scheduled if item.samples})
    assert sum(chunks) == 2000 and max(chunks) < 512 and min(chunks[:-1]) > 16


def test_without_a_bound_the_prompt_takes_the_whole_token_budget():
    scheduler = decoding_scheduler(None, LinearCost())
    out = scheduler.schedule()
    assert [item.num_tokens for item in out.scheduled if item.request.request_id == "long"] == [512 - 8]


def test_a_prompt_progresses_by_at_least_a_block_when_the_decodes_alone_overrun_the_bound():
    scheduler = decoding_scheduler(5, LinearCost())
    out = scheduler.schedule()
    assert len(out.scheduled) == 9
    assert [item.num_tokens for item in out.scheduled if item.request.request_id == "long"] == [16]


def test_a_faster_model_gets_bigger_chunks():
    def first_chunk(cost: LinearCost) -> int:
        out = decoding_scheduler(100, cost).schedule()
        return next(item.num_tokens for item in out.scheduled if item.request.request_id == "long")

    assert first_chunk(LinearCost(per_prefill_token=5e-4)) > first_chunk(LinearCost(per_prefill_token=1e-3))


@pytest.mark.parametrize("value", [0, -5.0, float("nan")])
def test_a_bound_that_is_not_positive_is_refused(value):
    with pytest.raises(ValueError, match="max_step_ms must be > 0"):
        SchedulerConfig(max_step_ms=value)
    with pytest.raises(ValueError, match="max_step_ms must be > 0"):
        EngineConfig(max_step_ms=value)


def test_a_bound_without_a_cost_model_is_refused():
    with pytest.raises(ValueError, match="needs a step-cost model"):
        Scheduler(SchedulerConfig(max_step_ms=100), KVCacheManager(16, 4))


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "step", "step", "step", "abort"]), st.integers(0, 10_000)),
               max_size=40)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops, st.integers(8, 48), st.sampled_from([1, 2, 4]), st.integers(2, 40), st.sampled_from([3, 20, 60]),
       st.integers(0, 1000))
def test_under_a_bound_a_planned_run_matches_stepping_token_by_token(operations, num_blocks, block_size, budget,
                                                                     max_step_ms, cut):
    kv = KVCacheManager(num_blocks, block_size, record_events=True)
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=96, max_step_ms=max_step_ms)
    scheduler = Scheduler(config, kv, LinearCost(const=1e-3))
    live: list[str] = []

    def prompt_for(index: int, value: int) -> list[int]:
        length = 1 + value % (num_blocks * block_size // 2)
        return list(range(100 + index, 100 + index + length))

    for i, (op, value) in enumerate(operations):
        apply_operation(scheduler, op, value, i, prompt_for, live, longest_output=40)
    kv.take_events()
    for attempt in range(3):
        assert_run_matches_stepping(scheduler, cut + attempt)
