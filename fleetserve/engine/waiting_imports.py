"""Prefilled requests (disaggregated prefill: their prompt's KV came from a prefill replica, their first token
with it) that wait for their first decode step holding their blocks.

Imports take their blocks on arrival (fleetserve.engine.kv_cache.KVCacheManager.import_request). So that they
never keep the queue from moving, when the first waiting request cannot get blocks the newest waiting import
gives its up and computes its prompt when admitted. Plain Python, no torch, no clock: the scheduler owns it.
"""
from __future__ import annotations

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request


class WaitingImports:
    def __init__(self, kv_cache: KVCacheManager) -> None:
        self.kv_cache = kv_cache
        self._requests: dict[str, Request] = {}  # oldest first
        self.num_dropped = 0  # imports whose blocks went to the first in line

    def __bool__(self) -> bool:
        return bool(self._requests)

    def add(self, request: Request, num_prefilled: int) -> int | None:
        """Take blocks for the request's first `num_prefilled` tokens; returns the leading tokens the prefix
        cache already held, or None (nothing taken) when the blocks do not fit."""
        held = self.kv_cache.import_request(request, num_prefilled)
        if held is not None:
            request.num_computed_tokens = num_prefilled
            self._requests[request.request_id] = request
        return held

    def discard(self, request: Request) -> None:
        """The request no longer waits (admitted, or removed)."""
        self._requests.pop(request.request_id, None)

    def drop(self, request: Request) -> None:
        """The request gives up its blocks and imported tokens: it computes its prompt when admitted."""
        self.discard(request)
        self.kv_cache.free(request)
        request.num_computed_tokens = 0

    def drop_newest(self, keep: Request) -> bool:
        """Drop the newest waiting import other than `keep`; False if there is none."""
        for request in reversed(self._requests.values()):
            if request is not keep:
                self.drop(request)
                self.num_dropped += 1
                return True
        return False
