"""The KV cache's free-block order, held in two pools (blocks without a hash, then cached blocks by LRU),
checked against the one-queue rule it implements: allocations take blocks from the front of the queue;
a freed block goes to the back, or to the front when it has no hash, tail blocks first (so a request's
prefix is evicted last); a prefix hit takes its block out of the queue wherever it is."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig

from scheduler_ops import apply_operation, make_request, run_to_end


class QueueCheckedKVCache(KVCacheManager):
    """A KVCacheManager that replays each allocation and release on a plain list (the one-queue rule)
    and asserts, after each, that the manager hands blocks out in the same order."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        super().__init__(num_blocks, block_size, enable_prefix_caching, record_events=True)
        self.queue = list(range(num_blocks))

    def allocate_slots(self, request, num_new_tokens, computed_blocks=()):
        reclaimed = [block.block_id for block in computed_blocks if block.ref_count == 0]
        held = len(self.block_table(request.request_id))
        if not super().allocate_slots(request, num_new_tokens, computed_blocks):
            self.assert_same_order()
            return False
        for block_id in reclaimed:
            self.queue.remove(block_id)
        new = self.block_table(request.request_id)[held + len(computed_blocks):]
        assert new == self.queue[:len(new)]
        del self.queue[:len(new)]
        self.assert_same_order()
        return True

    def free(self, request):
        table = [self.blocks[block_id] for block_id in self.block_table(request.request_id)]
        super().free(request)
        for block in reversed(table):
            if block.ref_count == 0:
                if block.block_hash is None:
                    self.queue.insert(0, block.block_id)
                else:
                    self.queue.append(block.block_id)
        self.assert_same_order()

    def reset_prefix_cache(self):
        super().reset_prefix_cache()
        self.assert_same_order()

    def assert_same_order(self) -> None:
        assert [block.block_id for block in self.free_blocks_in_eviction_order()] == self.queue
        assert self.num_free_blocks == len(self.queue)
        # The prefix cache's own map, checked from inside: every entry and the block that carries its hash agree.
        assert all(self._cached[block.block_hash] is block for block in self.blocks if block.block_hash is not None)
        assert all(block.block_hash == block_hash for block_hash, block in self._cached.items())


def test_blocks_without_a_hash_go_out_before_cached_ones_and_prefixes_are_evicted_last():
    kv = KVCacheManager(num_blocks=8, block_size=2, record_events=True)
    cached = make_request("cached", [1, 2, 3, 4, 5, 6], max_tokens=1)
    partial = make_request("partial", [7], max_tokens=1)
    for request in (cached, partial):
        kv.allocate_slots(request, request.num_tokens)
        kv.cache_blocks(request, request.num_tokens)
    partial_block = kv.blocks[kv.block_table("partial")[0]]
    kv.free(cached)
    kv.free(partial)
    order = kv.free_blocks_in_eviction_order()
    # never used (4 of them), the freed block without a hash, then the cached ones tail first
    assert [b.block_hash is None for b in order] == [True] * 5 + [False] * 3
    assert order[0] is partial_block
    assert [b.block_id for b in order[5:]] == [2, 1, 0]
    tail_hash = kv.blocks[2].block_hash
    kv.take_events()
    kv.allocate_slots(make_request("x", [0] * 12, max_tokens=1), 12)  # 6 blocks: the 5 unhashed, then 1 cached
    removed = [h for event in kv.take_events() if event.kind == "removed" for h in event.block_hashes]
    assert removed == [tail_hash] and kv.num_free_blocks == 2
    assert kv.get_computed_blocks(make_request("y", [1, 2, 3, 4, 5], max_tokens=1))[1] == 4


def test_reset_keeps_the_order_and_drops_every_free_hash():
    kv = QueueCheckedKVCache(num_blocks=6, block_size=2)
    first = make_request("a", [1, 2, 3, 4], max_tokens=1)
    kv.allocate_slots(first, 4)
    kv.cache_blocks(first, 4)
    kv.free(first)
    assert kv.cached_prefix_length(first.block_hashes) == 2
    kv.reset_prefix_cache()
    assert kv.cached_prefix_length(first.block_hashes) == 0 and all(block.block_hash is None for block in kv.blocks)
    kv.allocate_slots(make_request("b", [0] * 11, max_tokens=1), 11)
    assert kv.num_free_blocks == 0


ops = st.lists(st.tuples(st.sampled_from(["add", "step", "step", "abort", "reset"]), st.integers(0, 10_000)),
               max_size=80)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ops, st.integers(3, 24), st.sampled_from([1, 2, 4]), st.integers(2, 40), st.booleans())
def test_the_two_pools_hand_out_blocks_in_one_queue_order(operations, num_blocks, block_size, budget, caching):
    kv = QueueCheckedKVCache(num_blocks, block_size, enable_prefix_caching=caching)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=256), kv)
    live: list[str] = []

    def prompt_for(index: int, value: int) -> list[int]:
        length = 1 + value % (num_blocks * block_size - 1)
        shared = [value % 3] * (value % (length + 1))  # prefixes that other requests repeat: prefix hits
        return (shared + list(range(100 + index, 100 + index + length)))[:length]

    for i, (op, value) in enumerate(operations):
        if op == "reset":
            kv.reset_prefix_cache()
        else:
            apply_operation(scheduler, op, value, i, prompt_for, live)
    run_to_end(scheduler, token=1)
    assert kv.num_free_blocks == kv.num_blocks
