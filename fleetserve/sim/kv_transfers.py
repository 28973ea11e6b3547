"""KV transfers in flight from prefill replicas to decode replicas, on the simulated clock.

A remote prefill (`RemotePrefill`) follows one request from its routing to the moment the decode replica
has its KV: its prefill runs on the prefill replica as a request of its own (max_tokens=1), then its prompt's
KV, less the blocks the decode replica already holds, crosses the link (fleetserve.perf.kv_link). Each prefill
replica sends over its own link one transfer's bytes at a time, so transfers queue behind each other there;
latencies overlap. A transfer does not occupy either replica's steps: both keep stepping while it runs.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.request import Request
from fleetserve.fleet.replicas import Ticket
from fleetserve.fleet.snapshot import RouteRequest
from fleetserve.perf.kv_link import KVLink


@dataclass(slots=True)
class RemotePrefill:
    request: Request  # the client's request, decoded on the decode replica
    route: RouteRequest
    record: RequestRecord  # the client's record: its first token comes when the KV lands
    decode_index: int
    decode_ticket: Ticket  # the request's load on the decode replica, from routing on, without prefill work
    decode_cached: int  # prompt tokens the router expected cached on the decode replica, should it prefill there
    prefill_index: int
    tokens: int = 0  # prompt tokens whose KV crossed the link
    prefilled_s: float = math.nan  # when the prefill replica finished the prompt
    landed_s: float = math.nan  # when the decode replica had the KV


@dataclass
class TransferStats:
    remote_prefills: int = 0  # requests prefilled on a prefill replica
    local_prefills: int = 0  # requests prefilled where they decode (the rule said so, or no prefill replica)
    fallbacks: int = 0  # sent to a prefill replica that refused them, then prefilled locally
    transfers: int = 0
    transferred_tokens: int = 0
    transferred_bytes: int = 0
    transfer_s: float = 0.0  # from the prefill's end to the KV's arrival, summed
    queued_s: float = 0.0  # of that, waiting behind other transfers on the same link

    def as_dict(self, link: KVLink, import_recomputes: int) -> dict[str, Any]:
        return {"link": link.kind.name, "link_bandwidth_bytes_s": link.kind.bandwidth_bytes_s,
                "link_latency_s": link.kind.latency_s, "kv_bytes_per_token": link.bytes_per_token,
                "remote_prefills": self.remote_prefills, "local_prefills": self.local_prefills,
                "fallbacks": self.fallbacks, "import_recomputes": import_recomputes,
                "transferred_tokens": self.transferred_tokens, "transferred_bytes": self.transferred_bytes,
                "mean_transfer_s": self.transfer_s / self.transfers if self.transfers else None,
                "mean_transfer_queued_s": self.queued_s / self.transfers if self.transfers else None}


class KVTransfers:
    def __init__(self, link: KVLink, num_replicas: int) -> None:
        self.link = link
        self.link_free_s = [0.0] * num_replicas  # per sending (prefill) replica: when its link's bytes are sent
        self._heap: list[tuple[float, int, RemotePrefill]] = []
        self._sequence = 0  # ties land in the order they started
        self.stats = TransferStats()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def start(self, remote: RemotePrefill, tokens: int, now: float) -> float:
        """Send `tokens` tokens' KV from the remote's prefill replica at `now`; returns when they land."""
        link = self.link
        sender = remote.prefill_index
        sending_s = max(now, self.link_free_s[sender])
        self.link_free_s[sender] = sending_s + link.serialization_seconds(tokens)
        landed = sending_s + link.transfer_seconds(tokens)
        remote.tokens = tokens
        remote.prefilled_s = now
        remote.landed_s = landed
        heapq.heappush(self._heap, (landed, self._sequence, remote))
        self._sequence += 1
        stats = self.stats
        stats.transfers += 1
        stats.transferred_tokens += tokens
        stats.transferred_bytes += link.transfer_bytes(tokens)
        stats.transfer_s += landed - now
        stats.queued_s += sending_s - now
        return landed

    def next_landing(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def pop(self) -> RemotePrefill:
        return heapq.heappop(self._heap)[2]
