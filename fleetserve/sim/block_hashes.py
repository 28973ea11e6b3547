"""KV block hashes for simulated requests, derived from a trace's shared-prefix ids instead of real tokens.

A simulated request has no token ids, so its blocks get stand-in hashes that keep the one property the
prefix cache relies on: two blocks have equal hashes exactly when their tokens (and every token before
them) would be equal. Block j (tokens [j*B, (j+1)*B)) lies in the shared prefix when its last token is
covered by the request's prefix ids; its content is then fixed by those ids and by where it ends, so it
hashes (chain of the prefix ids it covers, end position). Every other block (unique prompt text, output
tokens) gets a number no other request uses. The hashes cover the whole request (prompt and output), so
the KV-cache manager never needs the token ids to extend them.
"""
from __future__ import annotations

from fleetserve.workload.spec import RequestSpec

SHARED_HASH_MASK = (1 << 62) - 1
UNIQUE_HASH_BASE = 1 << 62  # above every shared hash, so the two kinds never collide
UNIQUE_HASH_STRIDE = 1 << 28  # blocks per request; a request longer than 2**28 blocks is not a concern


def shared_prefix_hashes(spec: RequestSpec, block_size: int) -> list[int]:
    """Hashes of the request's KV blocks that lie wholly inside its shared prefix."""
    if not spec.prefix_ids:
        return []
    prefix_block = spec.prefix_block_tokens
    shared_tokens = min(spec.prompt_tokens, len(spec.prefix_ids) * prefix_block)
    num_blocks = shared_tokens // block_size
    if num_blocks == 0:
        return []
    chain: list[int] = []
    parent = 0
    for prefix_id in spec.prefix_ids[:-(-num_blocks * block_size // prefix_block)]:
        parent = hash((parent, prefix_id))
        chain.append(parent)
    return [hash((chain[(end - 1) // prefix_block], end)) & SHARED_HASH_MASK
            for end in range(block_size, num_blocks * block_size + 1, block_size)]


def request_block_hashes(spec: RequestSpec, block_size: int, total_tokens: int, uid: int
                         ) -> tuple[list[int], int]:
    """(hashes of every full block of a request that grows to `total_tokens`, how many of them are shared
    prefix blocks); `uid` must be unique per request."""
    hashes = shared_prefix_hashes(spec, block_size)
    num_shared = len(hashes)
    base = UNIQUE_HASH_BASE + uid * UNIQUE_HASH_STRIDE
    hashes.extend(range(base + num_shared, base + total_tokens // block_size))
    return hashes, num_shared
