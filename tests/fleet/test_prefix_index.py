"""The router's prefix index: KV events, routing records with a TTL, and leading-block lookups."""
from __future__ import annotations

import pytest

from fleetserve.fleet.prefix_index import PrefixIndex
from fleetserve.wire.block_hashes import chain_block_hashes


def hexes(hashes: list[int]) -> list[str]:
    return [f"{h:016x}" for h in hashes]


def test_feed_events_store_remove_and_clear():
    index = PrefixIndex()
    prompt = chain_block_hashes(list(range(64)), 16)
    index.apply_events("a", [{"type": "stored", "block_hashes": hexes(prompt[:3]), "parent_hash": None,
                              "token_count": 48}])
    assert index.cached_blocks("a", prompt, now=0.0) == 3
    assert index.cached_blocks("b", prompt, now=0.0) == 0
    index.apply_events("a", [{"type": "removed", "block_hashes": hexes(prompt[1:2])}])
    assert index.cached_blocks("a", prompt, now=0.0) == 1  # stops at the first block it lacks
    index.apply_events("a", [{"type": "cleared", "block_hashes": []}])
    assert index.cached_blocks("a", prompt, now=0.0) == 0


def test_feed_entries_do_not_expire():
    index = PrefixIndex(ttl_s=1.0)
    index.stored("a", [1, 2])
    assert index.cached_blocks("a", [1, 2], now=1e9) == 2


def test_routed_entries_expire_after_their_ttl():
    index = PrefixIndex(ttl_s=10.0)
    index.routed("a", [1, 2, 3], now=100.0)
    assert index.cached_blocks("a", [1, 2, 3, 4], now=109.0) == 3
    assert index.cached_blocks("a", [1, 2, 3], now=110.0) == 0
    assert index.expire(now=110.0) == 3
    assert index.blocks_held("a") == 0


def test_a_routing_record_never_shortens_what_a_feed_confirmed():
    index = PrefixIndex(ttl_s=10.0)
    index.stored("a", [1])
    index.routed("a", [1, 2], now=0.0, ttl_s=5.0)
    assert index.cached_blocks("a", [1, 2], now=6.0) == 1
    assert index.expire(now=6.0) == 1 and index.blocks_held("a") == 1


def test_the_per_replica_cap_drops_the_oldest_blocks():
    index = PrefixIndex(max_blocks_per_replica=3)
    index.stored("a", [1, 2, 3, 4])
    assert index.cached_blocks("a", [2, 3, 4], now=0.0) == 3
    assert index.cached_blocks("a", [1], now=0.0) == 0


def test_unknown_event_types_are_refused_with_the_event():
    with pytest.raises(ValueError, match="'moved'"):
        PrefixIndex().apply_events("a", [{"type": "moved"}])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="ttl_s"):
        PrefixIndex(ttl_s=0)
