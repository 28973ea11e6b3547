"""The block-hash chain is a wire format (docs/kv_events.md): replicas publish it, routers recompute it."""
from __future__ import annotations

import hashlib
import struct

from fleetserve.wire.block_hashes import chain_block_hashes, hash_block_tokens


def documented_hash(parent: int, tokens: list[int]) -> int:
    data = parent.to_bytes(8, "little") + struct.pack(f"<{len(tokens)}I", *tokens)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def test_the_chain_is_the_documented_formula_and_keeps_its_values():
    tokens = list(range(40))
    hashes = chain_block_hashes(tokens, 16)
    assert hashes == [documented_hash(0, tokens[:16]), documented_hash(hashes[0], tokens[16:32])]
    assert [f"{h:016x}" for h in hashes] == ["8e44fed77e359692", "c808176d367c6c93"]  # the tail (8 tokens) is no block


def test_a_chain_continues_from_a_parent_and_depends_on_every_earlier_token():
    tokens = list(range(48))
    whole = chain_block_hashes(tokens, 16)
    assert chain_block_hashes(tokens[16:], 16, parent=whole[0]) == whole[1:]
    assert hash_block_tokens(None, tokens[:16]) == whole[0]
    assert chain_block_hashes([7] + tokens[1:], 16)[2] != whole[2]
