"""A run of decode steps planned and applied by the scheduler leaves the scheduler and the KV cache as
stepping `schedule`/`update_from_output` token by token would, on the engine's own classes.

Block ids may differ (a run takes each request's new blocks at once, stepping takes them a step at a time
across requests), so blocks are compared by what they hold: their hash, or none. For the same reason the
KV-event feed may group and order its entries differently; what a subscriber learns from it is the same."""
from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.decode_run_start import begin_decode_run
from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig

from run_checks import assert_run_matches_stepping, step
from scheduler_ops import apply_operation, make_request


def test_a_run_opened_by_an_admission_prefills_the_newcomer_and_decodes_the_others():
    kv = KVCacheManager(num_blocks=64, block_size=4, record_events=True)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16, max_model_len=128), kv)
    for rid, prompt_len, max_tokens in (("a", 6, 12), ("b", 9, 20)):
        scheduler.add_request(make_request(rid, list(range(prompt_len)), max_tokens=max_tokens))
    while any(r.num_output_tokens == 0 for r in scheduler.running) or scheduler.waiting:
        step(scheduler)
    scheduler.add_request(make_request("c", list(range(100, 140)), max_tokens=20))
    probe = copy.deepcopy(scheduler)
    run = begin_decode_run(probe)
    assert run is not None and run.prefill is not None
    assert [r.request_id for r in run.decoding] == ["a", "b"] and run.prefill.request.request_id == "c"
    assert run.prefill.chunks == [14, 14, 12] and run.prefill.completes
    # "a" reaches max_tokens first: it has sampled 1 token, so 11 more steps end the run.
    assert run.steps == 11
    assert assert_run_matches_stepping(scheduler, cut=10)  # the whole run: "a" finishes in its last step
    # "c" sampled from the step of its last chunk (the third) on
    assert "a" not in scheduler.requests and scheduler.requests["c"].num_output_tokens == 11 - 3 + 1


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "step", "step", "step", "abort"]), st.integers(0, 10_000)),
               max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops, st.integers(4, 48), st.sampled_from([1, 2, 4]), st.integers(2, 40), st.sampled_from([0, 0, 3, 8]),
       st.booleans(), st.integers(0, 1000))
def test_a_planned_and_applied_run_matches_stepping_token_by_token(operations, num_blocks, block_size, budget,
                                                                   prefill_cap, caching, cut):
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=caching, record_events=True)
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=96,
                             long_prefill_token_threshold=prefill_cap)
    scheduler = Scheduler(config, kv)
    live: list[str] = []

    def prompt_for(index: int, value: int) -> list[int]:
        length = 1 + value % (num_blocks * block_size // 2)
        shared = [value % 3] * (value % (length + 1))  # prefixes that other requests repeat: prefix hits
        return (shared + list(range(100 + index, 100 + index + length)))[:length]

    for i, (op, value) in enumerate(operations):
        apply_operation(scheduler, op, value, i, prompt_for, live, longest_output=40)
    kv.take_events()
    for attempt in range(3):  # a few runs in a row, each from where the last one left off
        assert_run_matches_stepping(scheduler, cut + attempt)


def test_no_run_is_planned_while_a_sampled_token_could_end_a_request():
    """A run's tokens are placeholders, so a request that an end-of-sequence or stop token could end must be
    stepped token by token."""
    from fleetserve.engine.sampling_params import SamplingParams

    def scheduler_with(request: Request) -> Scheduler:
        scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=64), KVCacheManager(32, 4))
        scheduler.add_request(request)
        step(scheduler)  # the prompt; from here the request decodes
        return scheduler

    length_only = make_request("length", [1, 2, 3, 4, 5], max_tokens=20)
    assert length_only.stops_only_at_length and begin_decode_run(scheduler_with(length_only)) is not None
    for name, params, eos in [("stop-token", SamplingParams(max_tokens=20, ignore_eos=True, stop_token_ids=[9]), ()),
                              ("eos", SamplingParams(max_tokens=20), (2,))]:
        request = Request(name, [1, 2, 3, 4, 5], params, frozenset(eos))
        assert not request.stops_only_at_length
        assert begin_decode_run(scheduler_with(request)) is None, name
