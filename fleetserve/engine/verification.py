"""Applying a verification step (speculative decoding) to its request, for the scheduler."""
from __future__ import annotations

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request


def accept_verified(request: Request, start: int, tokens: list[int], kv_cache: KVCacheManager,
                    max_model_len: int) -> bool:
    """`tokens` are the accepted drafts and the token sampled after them, for a step that began at token
    `start`. The computed tokens roll back past the rejected drafts (their KV slots are rewritten when those
    positions are computed again), and only verified tokens' blocks reach the prefix cache. Returns whether
    the request stopped (at the first stopping token; the tokens after it are dropped)."""
    request.spec_token_ids = []
    appended = 0
    stopped = False
    for token in tokens:
        request.output_token_ids.append(token)
        appended += 1
        if request.check_stop_after_token(max_model_len):
            stopped = True
            break
    # The known token and each accepted draft now have their KV; the last appended token does not yet.
    request.num_computed_tokens = start + appended
    kv_cache.cache_blocks(request, request.num_computed_tokens)
    return stopped
