"""The KV-cache manager and scheduler as plain Python: block accounting, prefix hits, eviction order,
and a property test that every block comes back once all requests end."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import RequestStatus
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.wire.block_hashes import chain_block_hashes, hash_block_tokens

from scheduler_ops import apply_operation, make_request, run_to_end


def test_block_hashes_are_chained_and_deterministic():
    tokens = list(range(40))
    hashes = chain_block_hashes(tokens, 16)
    assert len(hashes) == 2
    assert hashes[0] == hash_block_tokens(None, tokens[:16])
    assert hashes[1] == hash_block_tokens(hashes[0], tokens[16:32])
    assert chain_block_hashes([99] + tokens[1:], 16)[1] != hashes[1]


def test_prefix_hit_reuses_full_blocks_and_counts_tokens():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    first = make_request("a", list(range(10)))
    blocks, cached = kv.get_computed_blocks(first)
    assert cached == 0 and kv.prefix_cache_queries == 10
    assert kv.allocate_slots(first, 10, blocks)
    first.num_computed_tokens = 10
    kv.cache_blocks(first, 10)
    second = make_request("b", list(range(9)) + [50, 51])
    blocks, cached = kv.get_computed_blocks(second)
    assert cached == 8 and [b.block_id for b in blocks] == kv.block_table("a")[:2]
    assert kv.prefix_cache_hits == 8


def test_a_full_hit_still_leaves_the_last_token_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    first = make_request("a", list(range(8)))
    kv.allocate_slots(first, 8)
    kv.cache_blocks(first, 8)
    _, cached = kv.get_computed_blocks(make_request("b", list(range(8))))
    assert cached == 4


def test_freed_cached_blocks_are_evicted_least_recently_used_first():
    kv = KVCacheManager(num_blocks=4, block_size=2, record_events=True)
    old, new = make_request("old", [1, 2, 3, 4]), make_request("new", [5, 6, 7, 8])
    for r in (old, new):
        kv.allocate_slots(r, 4)
        kv.cache_blocks(r, 4)
    kv.free(old)
    kv.free(new)
    kv.take_events()
    kv.allocate_slots(make_request("x", [9, 9, 9]), 3)
    removed = [h for e in kv.take_events() if e.kind == "removed" for h in e.block_hashes]
    assert removed == list(reversed(chain_block_hashes([1, 2, 3, 4], 2)))
    assert kv.get_computed_blocks(make_request("y", [5, 6, 7, 8, 1]))[1] == 4


def test_cached_prefix_length_counts_the_leading_cached_blocks_until_they_are_evicted():
    kv = KVCacheManager(num_blocks=3, block_size=2)
    first = make_request("a", [1, 2, 3, 4, 5])
    kv.allocate_slots(first, 5)
    kv.cache_blocks(first, 5)
    chain = chain_block_hashes([1, 2, 3, 4, 5, 6], 2)
    assert kv.held_block_counts([first]) == [3]
    assert kv.cached_prefix_length(chain) == 2  # the third block is not full, so not cached
    assert kv.cached_prefix_length(chain_block_hashes([1, 2, 9, 9], 2)) == 1
    assert kv.cached_prefix_length([chain_block_hashes([9, 9], 2)[0], chain[1]]) == 0  # matched from the first
    kv.free(first)
    assert kv.cached_prefix_length(chain) == 2  # freed blocks keep their hashes until reused
    kv.allocate_slots(make_request("b", [7] * 5), 5)  # takes the unhashed block, then both cached ones
    assert kv.cached_prefix_length(chain) == 0


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    r = make_request("a", list(range(12)))
    assert not kv.allocate_slots(r, 12)
    assert kv.num_free_blocks == 2 and kv.block_table("a") == []


def test_scheduler_chunks_prefill_under_the_token_budget():
    kv = KVCacheManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8, max_model_len=128), kv)
    scheduler.add_request(make_request("a", list(range(20))))
    out = scheduler.schedule()
    assert [(s.num_tokens, s.samples) for s in out.scheduled] == [(8, False)]
    scheduler.update_from_output(out, {})
    out = scheduler.schedule()
    assert out.scheduled[0].start == 8 and out.num_batched_tokens == 8


def test_decodes_and_prefills_share_one_budget():
    kv = KVCacheManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=10, max_model_len=128), kv)
    scheduler.add_request(make_request("a", list(range(5)), max_tokens=10))
    scheduler.update_from_output(scheduler.schedule(), {"a": 1})
    scheduler.add_request(make_request("b", list(range(30))))
    out = scheduler.schedule()
    assert [(s.request.request_id, s.num_tokens) for s in out.scheduled] == [("a", 1), ("b", 9)]


def test_preemption_takes_the_newest_and_everyone_finishes():
    kv = KVCacheManager(num_blocks=6, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=128), kv)
    requests = [make_request(f"r{i}", list(range(i, i + 6)), max_tokens=10) for i in range(3)]
    for r in requests:
        scheduler.add_request(r)
    preempted: list[str] = []
    while scheduler.has_unfinished():
        out = scheduler.schedule()
        preempted += [r.request_id for r in out.preempted]
        scheduler.update_from_output(out, {s.request.request_id: 3 for s in out.scheduled if s.samples})
    assert preempted and preempted[0] == "r2"
    assert all(r.status == RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 10 for r in requests)
    assert kv.num_free_blocks == kv.num_blocks


ops = st.lists(st.tuples(st.sampled_from(["add", "step", "abort"]), st.integers(0, 10_000)), max_size=60)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops, st.integers(3, 24), st.sampled_from([2, 4, 8]), st.integers(4, 40))
def test_every_block_is_free_when_all_requests_end(operations, num_blocks, block_size, budget):
    kv = KVCacheManager(num_blocks=num_blocks, block_size=block_size)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=256), kv)
    live: list[str] = []

    def prompt_for(index: int, value: int) -> list[int]:
        length = 1 + value % (num_blocks * block_size - 1)
        return [value % 5] * (length // 2) + list(range(length - length // 2))

    for i, (op, value) in enumerate(operations):
        apply_operation(scheduler, op, value, i, prompt_for, live)
        used = sum(len(kv.block_table(r)) for r in list(scheduler.requests))
        assert used + kv.num_free_blocks >= kv.num_blocks - used  # no block is lost mid-run
    run_to_end(scheduler)
    assert not scheduler.has_unfinished()
    assert kv.num_free_blocks == kv.num_blocks
    assert all(b.ref_count == 0 for b in kv.blocks)
