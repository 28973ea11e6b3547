"""Drafted tokens in the scheduler and the KV-cache manager (plain Python): drafts are extra tokens under the
step's budget, a verification rolls the computed tokens back past the rejected drafts, only verified tokens
reach the prefix cache, and preemption and aborts drop pending drafts; a property test over random runs."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import RequestStatus
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.wire.block_hashes import chain_block_hashes

from scheduler_ops import make_request, run_to_end


def decode_ready(scheduler: Scheduler | None, prompt: list[int], max_tokens: int = 20, budget: int = 64,
                 block_size: int = 4, num_blocks: int = 32) -> Scheduler:
    if scheduler is None:
        kv = KVCacheManager(num_blocks=num_blocks, block_size=block_size)
        scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=256), kv)
    scheduler.add_request(make_request("a", prompt, max_tokens=max_tokens))
    while not scheduler.requests["a"].output_token_ids:  # the prompt's last chunk samples the first token
        scheduler.update_from_output(scheduler.schedule(), {"a": 100})
    return scheduler


def test_drafts_are_scheduled_after_the_known_token_and_count_in_the_budget():
    scheduler = decode_ready(None, list(range(10)), budget=4)
    request = scheduler.requests["a"]
    request.spec_token_ids = [101, 102, 103, 104, 105]
    out = scheduler.schedule()
    (item,) = out.scheduled
    assert (item.start, item.num_tokens, item.drafts) == (10, 4, 3)  # the budget cuts the drafts to 3
    assert out.num_batched_tokens == 4


def test_a_verification_keeps_the_accepted_drafts_and_rolls_back_past_the_rejected():
    scheduler = decode_ready(None, list(range(10)))
    request = scheduler.requests["a"]
    request.spec_token_ids = [101, 102, 103, 104]
    out = scheduler.schedule()
    scheduler.update_from_output(out, {"a": [101, 102, 7]})  # two drafts accepted, then a different token
    assert request.output_token_ids == [100, 101, 102, 7]
    assert request.num_computed_tokens == 13  # prompt, 100, 101, 102: the token 7 is not computed yet
    assert request.spec_token_ids == []
    assert scheduler.kv_cache.block_table("a")  # the blocks taken for the rejected drafts stay with it
    out = scheduler.schedule()
    assert [(s.start, s.num_tokens, s.drafts) for s in out.scheduled] == [(13, 1, 0)]


def test_only_verified_tokens_reach_the_prefix_cache():
    scheduler = decode_ready(None, list(range(6)), block_size=4)  # 6 prompt tokens, then 100
    request = scheduler.requests["a"]
    request.spec_token_ids = [101, 102, 103, 104, 105]
    out = scheduler.schedule()
    scheduler.update_from_output(out, {"a": [9]})  # every draft rejected
    kv = scheduler.kv_cache
    assert request.num_computed_tokens == 7
    hashed = [kv.blocks[b].block_hash for b in kv.block_table("a") if kv.blocks[b].block_hash is not None]
    assert hashed == chain_block_hashes(list(range(6)) + [100, 9], 4)[:1]  # one full verified block only


def test_a_stop_token_among_the_accepted_ends_the_request_there():
    scheduler = decode_ready(None, list(range(10)))
    request = scheduler.requests["a"]
    request.sampling_params.stop_token_ids = [102]
    request.spec_token_ids = [101, 102, 103]
    out = scheduler.schedule()
    finished = scheduler.update_from_output(out, {"a": [101, 102, 103, 5]})
    assert finished == [request] and request.status == RequestStatus.FINISHED_STOPPED
    assert request.output_token_ids == [100, 101, 102]
    assert scheduler.kv_cache.num_free_blocks == scheduler.kv_cache.num_blocks


def test_the_length_stop_ends_a_verification_at_max_tokens():
    scheduler = decode_ready(None, list(range(10)), max_tokens=3)
    request = scheduler.requests["a"]
    request.spec_token_ids = [101, 102, 103]
    out = scheduler.schedule()
    scheduler.update_from_output(out, {"a": [101, 102, 103, 104]})
    assert request.status == RequestStatus.FINISHED_LENGTH and request.output_token_ids == [100, 101, 102]


def test_preemption_drops_pending_drafts():
    kv = KVCacheManager(num_blocks=5, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256), kv)
    scheduler.add_request(make_request("a", list(range(8)), max_tokens=12))
    scheduler.add_request(make_request("b", list(range(50, 58)), max_tokens=12))
    scheduler.update_from_output(scheduler.schedule(), {"a": 1, "b": 2})
    a, b = scheduler.requests["a"], scheduler.requests["b"]
    a.spec_token_ids, b.spec_token_ids = [3, 4, 5], [6, 7, 8]  # 12 tokens each: not both fit in 5 blocks
    out = scheduler.schedule()
    assert out.preempted == [b] and b.spec_token_ids == [] and b.num_computed_tokens == 0
    assert [(s.request.request_id, s.drafts) for s in out.scheduled] == [("a", 3)]


ops = st.lists(st.tuples(st.sampled_from(["add", "draft", "step", "step", "abort"]), st.integers(0, 10_000)),
               max_size=60)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops, st.integers(4, 24), st.sampled_from([2, 4, 8]), st.integers(4, 40))
def test_kv_and_prefix_cache_invariants_hold_with_drafts(operations, num_blocks, block_size, budget):
    """Random adds, drafts (verified with a random number accepted), steps and aborts: a request's computed
    tokens never include an unverified one, every hashed block of a request is a full block of its verified
    tokens, and every block is free once all requests end."""
    kv = KVCacheManager(num_blocks=num_blocks, block_size=block_size)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=256), kv)
    live: list[str] = []
    for index, (op, value) in enumerate(operations):
        if op == "add":
            length = 1 + value % (num_blocks * block_size // 2)
            try:
                scheduler.add_request(make_request(f"q{index}", [value % 7] * length, max_tokens=1 + value % 12))
                live.append(f"q{index}")
            except ValueError:
                pass
        elif op == "draft":
            for request in scheduler.running:
                if request.num_tokens - request.num_computed_tokens == 1:
                    request.spec_token_ids = [(value + i) % 7 for i in range(1 + value % 5)]
        elif op == "step":
            out = scheduler.schedule()
            sampled: dict[str, int | list[int]] = {}
            for item in out.scheduled:
                if item.samples:
                    drafts = item.request.spec_token_ids[:item.drafts]
                    accepted = value % (item.drafts + 1)
                    sampled[item.request.request_id] = drafts[:accepted] + [value % 7] if item.drafts else value % 7
            scheduler.update_from_output(out, sampled)
        elif op == "abort" and live:
            scheduler.finish_requests([live[value % len(live)]], RequestStatus.FINISHED_ABORTED)
        for request in scheduler.running:
            assert request.num_computed_tokens <= request.num_tokens
            tokens = request.all_token_ids
            chain = chain_block_hashes(tokens, block_size)
            for position, block_id in enumerate(kv.block_table(request.request_id)):
                block_hash = kv.blocks[block_id].block_hash
                if block_hash is not None:
                    assert (position + 1) * block_size <= request.num_computed_tokens
                    assert block_hash == chain[position]
        for request in list(scheduler.waiting):
            assert request.spec_token_ids == [] or request.num_computed_tokens == 0
    run_to_end(scheduler)
    assert not scheduler.has_unfinished()
    assert kv.num_free_blocks == kv.num_blocks
    assert all(block.ref_count == 0 for block in kv.blocks)
