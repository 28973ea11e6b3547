"""Paged KV-cache bookkeeping: a pool of fixed-size blocks, per-request block tables and a prefix cache.

Plain Python with no torch and no clock, so the live engine and the simulator drive the same class.
Block hashes are chained: blake2b-64 over the parent block's hash (8 bytes little-endian, 0 for the first
block) followed by the block's token ids (4 bytes little-endian each), as fleetserve.wire.block_hashes
computes them. The router computes the same hashes from the prompt tokens, so it can tell which replica
holds which prefix.
"""
from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fleetserve.engine.request import Request
from fleetserve.wire.block_hashes import BlockHash, hash_block_tokens


@dataclass(slots=True)
class KVBlock:
    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None


@dataclass(slots=True)
class KVEvent:
    """One change to the set of cached blocks, as published on the replica's KV-event feed."""
    kind: str  # "stored" | "removed" | "cleared"
    block_hashes: list[BlockHash] = field(default_factory=list)
    parent_hash: BlockHash | None = None
    token_count: int = 0

    def to_dict(self) -> dict:
        return {"type": self.kind, "block_hashes": [f"{h:016x}" for h in self.block_hashes],
                "parent_hash": None if self.parent_hash is None else f"{self.parent_hash:016x}",
                "token_count": self.token_count}


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 record_events: bool = False) -> None:
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got num_blocks={num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.record_events = record_events
        # Unpaused, the cyclic GC would run every few hundred new blocks and walk older objects each time, which
        # takes longer than making the blocks (a simulated fleet makes millions); a block holds no references.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.blocks = [KVBlock(i) for i in range(num_blocks)]
        finally:
            if gc_was_enabled:
                gc.enable()
        # The free blocks, in the order they are handed out, are the ones without a hash and then the cached
        # ones, least recently used first (a cached block keeps its hash until it is reused). Two pools keep
        # that order cheaply: blocks without a hash form a stack (the list's end goes first), so a run of
        # them moves with one slice; cached blocks sit in an LRU dict, from which a prefix hit can take one
        # out of the middle.
        self._free_unhashed: list[KVBlock] = self.blocks[::-1]
        self._free_cached: OrderedDict[int, KVBlock] = OrderedDict()
        self._cached: dict[BlockHash, KVBlock] = {}
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.events: list[KVEvent] = []

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_unhashed) + len(self._free_cached)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks that hold a prefix-cache entry, in use or free."""
        return len(self._cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def free_blocks_in_eviction_order(self) -> list[KVBlock]:
        return self._free_unhashed[::-1] + list(self._free_cached.values())

    def held_block_counts(self, requests: Iterable[Request]) -> list[int]:
        """How many blocks each of these requests holds (each must hold a block table: admitted, not freed)."""
        tables = self._tables
        return [len(tables[request.request_id]) for request in requests]

    def block_table(self, request_id: str) -> list[int]:
        return [b.block_id for b in self._tables.get(request_id, ())]

    def cached_prefix_length(self, block_hashes: Sequence[BlockHash]) -> int:
        """How many leading hashes of the chain are in the prefix cache (held or free, not yet evicted)."""
        cached = self._cached
        hits = 0
        for block_hash in block_hashes:
            if block_hash not in cached:
                break
            hits += 1
        return hits

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def request_block_hashes(self, request: Request) -> list[BlockHash]:
        """Extend the request's chained hashes to cover all its full blocks."""
        hashes = request.block_hashes
        bs = self.block_size
        num_full = request.num_tokens // bs
        while len(hashes) < num_full:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash_block_tokens(parent, request.token_ids_slice(i * bs, (i + 1) * bs)))
        return hashes

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Longest cached prefix of the request; the last token is always left to compute for its logits."""
        if not self.enable_prefix_caching or request.request_id in self._tables:
            return [], 0
        hashes = self.request_block_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hit: list[KVBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            hit.append(block)
        self.prefix_cache_queries += request.num_tokens
        self.prefix_cache_hits += len(hit) * self.block_size
        return hit, len(hit) * self.block_size

    def can_allocate(self, request: Request, num_new_tokens: int,
                     computed_blocks: Sequence[KVBlock] = ()) -> bool:
        return self._num_new_blocks(request, num_new_tokens, computed_blocks) <= self._allocatable(computed_blocks)

    def free_blocks_taken(self, request: Request, num_new_tokens: int,
                          computed_blocks: Sequence[KVBlock] = ()) -> int:
        """How many free blocks `allocate_slots` with these arguments would take: new ones, and prefix hits
        that sit free in the cache."""
        return (self._num_new_blocks(request, num_new_tokens, computed_blocks)
                + sum(1 for b in computed_blocks if b.ref_count == 0))

    def _num_new_blocks(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[KVBlock]) -> int:
        have = len(self._tables.get(request.request_id, ())) + len(computed_blocks)
        total = request.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        return max(0, self.blocks_needed(total) - have)

    def _allocatable(self, computed_blocks: Sequence[KVBlock]) -> int:
        reclaimed = sum(1 for b in computed_blocks if b.ref_count == 0)
        return self.num_free_blocks - reclaimed

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_blocks: Sequence[KVBlock] = ()) -> bool:
        """Reserve blocks for num_new_tokens more tokens; False (and nothing changed) if they do not fit."""
        if computed_blocks:
            return self._allocate_with_prefix(request, num_new_tokens, computed_blocks)
        # The common case (no prefix hit), inlined: the simulator calls this for every request of a fleet.
        table = self._tables.get(request.request_id)
        num_new = -(-(request.num_computed_tokens + num_new_tokens) // self.block_size)
        free = len(self._free_unhashed) + len(self._free_cached)
        if table is None:
            if num_new > free:
                return False
            table = self._tables[request.request_id] = []
        else:
            num_new -= len(table)
            if num_new > free:
                return False
        if num_new > 0:
            self._pop_free_blocks(table, num_new)
        return True

    def _allocate_with_prefix(self, request: Request, num_new_tokens: int,
                              computed_blocks: Sequence[KVBlock]) -> bool:
        num_new = self._num_new_blocks(request, num_new_tokens, computed_blocks)
        if num_new > self._allocatable(computed_blocks):
            return False
        table = self._tables.setdefault(request.request_id, [])
        for block in computed_blocks:
            if block.ref_count == 0:
                del self._free_cached[block.block_id]  # a prefix hit is a cached block
            block.ref_count += 1
            table.append(block)
        self._num_cached_blocks[request.request_id] = len(table)
        if num_new > 0:
            self._pop_free_blocks(table, num_new)
        return True

    def import_request(self, request: Request, num_tokens: int) -> int | None:
        """Take blocks for the first `num_tokens` tokens of a request whose KV was computed elsewhere (a
        prefill replica): the leading full blocks this cache already holds are shared, fresh blocks hold the
        rest, and the full ones are published to the prefix cache at once (the caller writes their KV before
        any step reads it). Returns how many leading tokens were already held, so need no writing; None (and
        nothing changed) when the blocks do not fit."""
        if request.request_id in self._tables:
            raise ValueError(f"request {request.request_id!r} already holds blocks")
        hit: list[KVBlock] = []
        if self.enable_prefix_caching:
            for block_hash in self.request_block_hashes(request)[:num_tokens // self.block_size]:
                block = self._cached.get(block_hash)
                if block is None:
                    break
                hit.append(block)
        saved = request.num_computed_tokens
        request.num_computed_tokens = 0
        try:
            if not self._allocate_with_prefix(request, num_tokens - len(hit) * self.block_size, hit):
                return None
        finally:
            request.num_computed_tokens = saved
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += len(hit) * self.block_size
        self.cache_blocks(request, num_tokens)
        return len(hit) * self.block_size

    def _pop_free_blocks(self, table: list[KVBlock], count: int) -> None:
        """Move `count` (>= 1) free blocks to `table` in eviction order: blocks without a hash first, then
        the least recently used cached ones, whose hashes are evicted."""
        unhashed = self._free_unhashed
        if count == 1 and unhashed:  # a decoding request's next block: most calls
            block = unhashed.pop()
            block.ref_count = 1
            table.append(block)
            return
        if unhashed:
            take = count if count < len(unhashed) else len(unhashed)
            taken = unhashed[-take:]
            del unhashed[-take:]
            taken.reverse()
            for block in taken:
                block.ref_count = 1
            table += taken
            count -= take
        if count:
            popitem = self._free_cached.popitem
            cached = self._cached
            append = table.append
            # One `removed` event for all the blocks evicted here: a feed follower (the router, the simulated
            # router) pays per event, and a long prompt evicts many blocks at once.
            evicted: list[BlockHash] = []
            for _ in range(count):
                block = popitem(False)[1]
                block_hash = block.block_hash
                if block_hash is not None and cached.get(block_hash) is block:
                    del cached[block_hash]
                    evicted.append(block_hash)
                block.block_hash = None
                block.ref_count = 1
                append(block)
            if evicted and self.record_events:
                self.events.append(KVEvent("removed", evicted))

    def cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Publish the request's blocks that are full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        request_id = request.request_id
        table = self._tables.get(request_id)
        if not table:
            return
        start = self._num_cached_blocks.get(request_id, 0)
        end = num_computed_tokens // self.block_size
        if end > len(table):
            end = len(table)
        if end <= start:
            return
        hashes = request.block_hashes
        if len(hashes) < end:
            hashes = self.request_block_hashes(request)
        cached = self._cached
        stored: list[BlockHash] = []
        record_events = self.record_events  # the stored hashes are kept only for the feed
        # Paired slices rather than indexing: a prefill publishes its whole prompt's blocks here, so this loop
        # runs for nearly every block a simulated fleet ever fills.
        for block, block_hash in zip(table[start:end], hashes[start:end]):
            # When two requests computed the same block, the hash stays with the block that cached it first.
            if block.block_hash is None and block_hash not in cached:
                block.block_hash = block_hash
                cached[block_hash] = block
                if record_events:
                    stored.append(block_hash)
        self._num_cached_blocks[request_id] = end
        if stored:
            parent = hashes[start - 1] if start > 0 else None
            self.events.append(KVEvent("stored", stored, parent, len(stored) * self.block_size))

    def free(self, request: Request) -> None:
        """Release the request's blocks; tail blocks go to the eviction end first so prefixes live longest."""
        table = self._tables.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if not table:
            return
        free_cached = self._free_cached
        unhashed: list[KVBlock] = []
        for block in reversed(table):
            ref_count = block.ref_count - 1
            block.ref_count = ref_count
            if ref_count == 0:
                if block.block_hash is None:
                    unhashed.append(block)
                else:
                    free_cached[block.block_id] = block
        # Pushed tail first, so the request's first unhashed block is the next one handed out.
        self._free_unhashed += unhashed

    def reset_prefix_cache(self) -> None:
        # The cached free blocks lose their hashes and stay where they are in eviction order: after the
        # blocks that never had one.
        cached_free = list(self._free_cached.values())
        for block in cached_free:
            block.block_hash = None
        self._free_unhashed[:0] = cached_free[::-1]
        self._free_cached.clear()
        self._cached = {h: b for h, b in self._cached.items() if b.ref_count > 0}
        if self.record_events:
            self.events.append(KVEvent("cleared"))

    def take_events(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events
