"""What a prefill replica keeps for a decode replica (its requests' prompt KV, until fetched), and what a decode
replica brings to its engine (the KV and first token a prefill replica computed).

An export is a host copy of the prompt's KV taken as its prefill ends, so the request's blocks are freed as
for any finished request and a decode replica that never comes costs host memory for `ttl_s` at most; past
`max_bytes` the oldest exports go first.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class KVExport:
    prompt_token_ids: list[int]
    first_token_id: int
    kv: torch.Tensor  # (prompt tokens, layers, 2, kv_heads, head_dim), contiguous
    created_s: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@dataclass
class PrefilledKV:
    """The KV of prompt tokens [start, end of prompt) and the first output token, from a prefill replica."""
    start: int
    kv: torch.Tensor  # (tokens, layers, 2, kv_heads, head_dim)
    first_token_id: int


class KVExports:
    """Exports by request id; put on the engine thread, taken by the server's transfer endpoint."""

    def __init__(self, ttl_s: float, max_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._exports: OrderedDict[str, KVExport] = OrderedDict()
        self._lock = threading.Lock()
        self.num_exported = 0
        self.num_taken = 0
        self.num_dropped = 0  # expired or pushed out before a decode replica fetched them

    def put(self, request_id: str, export: KVExport) -> None:
        with self._lock:
            self._exports[request_id] = export
            self.num_exported += 1
            self._drop_stale(time.monotonic())

    def take(self, request_id: str) -> KVExport | None:
        with self._lock:
            self._drop_stale(time.monotonic())
            export = self._exports.pop(request_id, None)
            if export is not None:
                self.num_taken += 1
            return export

    def pending(self) -> tuple[int, int]:
        """(exports waiting to be fetched, their bytes)."""
        with self._lock:
            self._drop_stale(time.monotonic())
            return len(self._exports), sum(e.nbytes for e in self._exports.values())

    def _drop_stale(self, now: float) -> None:
        exports = self._exports
        total = sum(e.nbytes for e in exports.values())
        while exports:
            oldest = next(iter(exports.values()))
            if now - oldest.created_s <= self.ttl_s and total <= self.max_bytes:
                return
            total -= oldest.nbytes
            exports.popitem(last=False)
            self.num_dropped += 1
