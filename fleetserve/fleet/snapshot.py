"""What a routing policy sees: the request and a snapshot of every replica, both plain data.

Policies are pure functions of these (invariant 2), so the live router and the simulated fleet can call
the very same policy objects. The router (or the simulator) fills `cached_prefix_tokens` per replica for
this request from its prefix index before asking the policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RouteRequest:
    request_id: str
    prompt_tokens: int
    max_tokens: int
    block_hashes: tuple[int, ...] = ()  # chained hashes of the prompt's full blocks (fleetserve.wire.block_hashes)
    session_key: str | None = None  # session header or the OpenAI `user` field
    ttft_slo_ms: float | None = None
    offline: bool = False  # offline service class: placed by the OfflineGate, held while every replica is busy


@dataclass(frozen=True)
class ReplicaState:
    replica_id: str
    healthy: bool = True
    in_flight: int = 0  # online requests routed here and not finished (the load online routing weighs)
    offline_in_flight: int = 0  # offline ones, which yield to online work inside the replica
    waiting_prefill_tokens: int = 0  # prompt tokens routed here whose prefill has not finished
    decoding_tokens: int = 0  # output tokens still to generate for requests routed here
    kv_usage: float = 0.0
    block_size: int = 16
    cached_prefix_tokens: int = 0  # for the request being routed: tokens of its prompt cached here
    prefill_tokens_per_s: float = 0.0  # measured or modelled prefill speed; 0 when unknown
    weight: float = 1.0  # relative capacity, for mixed hardware
    pool: str | None = None  # hardware pool, as a routing plan names it (e.g. "a100")
    role: str = "mixed"  # "mixed", "prefill" or "decode" (fleetserve.fleet.disaggregation)

    @property
    def queued_work_tokens(self) -> int:
        return self.waiting_prefill_tokens + self.decoding_tokens


@dataclass(frozen=True)
class FleetSnapshot:
    replicas: tuple[ReplicaState, ...] = field(default_factory=tuple)

    def healthy(self) -> list[ReplicaState]:
        return [r for r in self.replicas if r.healthy]
