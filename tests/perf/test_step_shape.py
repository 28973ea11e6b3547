import pytest

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.perf.model import StepShape
from fleetserve.perf.roofline import attended_pairs
from fleetserve.perf.step_shape import BatchShape, decode_context, mixed_shape, prefill_pairs, shape_of


def test_shape_of_a_real_mixed_batch_splits_attention_exactly():
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100), KVCacheManager(100, 16))
    for index, length in enumerate((20, 30, 300)):
        scheduler.add_request(Request(f"r{index}", list(range(index * 1000, index * 1000 + length)),
                                      SamplingParams(max_tokens=50, ignore_eos=True)))
    first = scheduler.schedule()  # r0 and r1 whole, r2's first 50 tokens
    scheduler.update_from_output(first, {"r0": 1, "r1": 1})
    shape = shape_of(scheduler.schedule())  # r0, r1 decode; r2 computes its next 98 tokens after 50
    assert shape == BatchShape(98, 2, 21 + 31 + 148, 1, 21 + 31, 98 * 50 + 98 * 99 / 2)
    assert shape == mixed_shape(98, 50, 2, 52)


def test_a_lone_last_token_is_a_decode():
    assert mixed_shape(1, 40, 3, 300) == BatchShape(0, 4, 341, 0, 341, 0.0)


def test_plain_shapes_fall_back_to_estimates_that_are_exact_without_mixing():
    decode = StepShape(0, 4, 400)
    assert decode_context(decode) == 400 and prefill_pairs(decode) == 0
    prefill = StepShape(100, 0, 500, 1)
    assert decode_context(prefill) == 0 and prefill_pairs(prefill) == pytest.approx(attended_pairs(prefill))
