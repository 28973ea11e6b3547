"""The KV block-hash chain of docs/kv_events.md, which a replica's KV cache and a router both compute.

hash(block i) = blake2b-64 over the parent block's hash (8 bytes little-endian, 0 for the first block)
followed by the block's token ids (4 bytes little-endian each), read back as a little-endian integer.
Because each hash covers its parent, holding block i means holding its whole prefix.
"""
from __future__ import annotations

import hashlib
from array import array
from typing import Sequence

BlockHash = int


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    digest = hashlib.blake2b(digest_size=8)
    digest.update((parent or 0).to_bytes(8, "little"))
    digest.update(array("I", token_ids).tobytes())
    return int.from_bytes(digest.digest(), "little")


def chain_block_hashes(token_ids: Sequence[int], block_size: int,
                       parent: BlockHash | None = None) -> list[BlockHash]:
    """The hashes of every full block of `token_ids`, each chained to the one before (the first to `parent`)."""
    hashes: list[BlockHash] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block_tokens(parent, token_ids[start:start + block_size])
        hashes.append(parent)
    return hashes
