"""Which replica holds which prompt-prefix blocks, so a policy can tell how much of a prompt is cached where.

Two sources feed it:
- a replica's KV-event feed (docs/kv_events.md): `stored` blocks are held until a `removed` or `cleared`
  event says otherwise;
- the router's own routing decisions: the blocks of a prompt sent to a replica are assumed cached there
  for `ttl_s` seconds. That is all an engine without a feed (vLLM, SGLang, llama.cpp) offers, and for an
  engine with a feed it covers the time between routing and the `stored` event.

Plain data with no clock of its own: callers pass `now` (seconds on any monotonic clock), so the
simulator can drive the same class on simulated time.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Sequence

FOREVER = math.inf


class PrefixIndex:
    def __init__(self, ttl_s: float = 120.0, max_blocks_per_replica: int = 500_000) -> None:
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if max_blocks_per_replica < 1:
            raise ValueError(f"max_blocks_per_replica must be >= 1, got {max_blocks_per_replica}")
        self.ttl_s = ttl_s
        self.max_blocks_per_replica = max_blocks_per_replica
        # replica id -> {block hash: expiry time (FOREVER when a feed says it is stored)}, oldest first.
        self._blocks: dict[str, OrderedDict[int, float]] = {}

    def replicas(self) -> list[str]:
        return list(self._blocks)

    def blocks_held(self, replica_id: str) -> int:
        return len(self._blocks.get(replica_id, ()))

    def _table(self, replica_id: str) -> OrderedDict[int, float]:
        table = self._blocks.get(replica_id)
        if table is None:
            table = self._blocks[replica_id] = OrderedDict()
        return table

    def _put(self, table: OrderedDict[int, float], block_hash: int, expiry: float) -> None:
        previous = table.pop(block_hash, None)
        table[block_hash] = expiry if previous is None else max(previous, expiry)
        while len(table) > self.max_blocks_per_replica:
            table.popitem(last=False)

    def stored(self, replica_id: str, block_hashes: Iterable[int]) -> None:
        table = self._table(replica_id)
        for block_hash in block_hashes:
            self._put(table, block_hash, FOREVER)

    def removed(self, replica_id: str, block_hashes: Iterable[int]) -> None:
        table = self._blocks.get(replica_id)
        if table is not None:
            for block_hash in block_hashes:
                table.pop(block_hash, None)

    def clear(self, replica_id: str) -> None:
        self._blocks.pop(replica_id, None)

    def apply_events(self, replica_id: str, events: Iterable[dict]) -> None:
        """Apply the `events` of one feed batch (hashes as 16 hex digits, as on the wire)."""
        for event in events:
            kind = event.get("type")
            if kind == "cleared":
                self.clear(replica_id)
            elif kind in ("stored", "removed"):
                hashes = [int(h, 16) for h in event.get("block_hashes") or ()]
                (self.stored if kind == "stored" else self.removed)(replica_id, hashes)
            else:
                raise ValueError(f"unknown KV event type {kind!r} from replica {replica_id!r}: {event!r}")

    def routed(self, replica_id: str, block_hashes: Sequence[int], now: float, ttl_s: float | None = None) -> None:
        """The prompt with these blocks was sent to this replica: assume it holds them for a while."""
        expiry = now + (self.ttl_s if ttl_s is None else ttl_s)
        table = self._table(replica_id)
        for block_hash in block_hashes:
            self._put(table, block_hash, expiry)

    def cached_blocks(self, replica_id: str, block_hashes: Sequence[int], now: float) -> int:
        """How many leading blocks of the prompt this replica holds. Hashes are chained, but a replica can
        evict a parent before its child, so the count stops at the first block it lacks."""
        table = self._blocks.get(replica_id)
        if not table:
            return 0
        count = 0
        for block_hash in block_hashes:
            expiry = table.get(block_hash)
            if expiry is None or expiry <= now:
                break
            count += 1
        return count

    def expire(self, now: float) -> int:
        """Drop entries whose time is up; returns how many."""
        dropped = 0
        for table in self._blocks.values():
            stale = [h for h, expiry in table.items() if expiry <= now]
            for block_hash in stale:
                del table[block_hash]
            dropped += len(stale)
        return dropped
