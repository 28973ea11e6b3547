"""Routing policies: pure functions of (request, fleet snapshot) -> replica id (invariant 2).

The live router and the simulated fleet call the same objects. Every policy considers only the healthy
replicas of the snapshot and raises NoHealthyReplica when there are none. Ties are broken by a hash of
(request id, replica id), so an idle fleet spreads requests instead of piling them on the first replica,
and the same request against the same snapshot always gets the same answer.

Work is measured in tokens throughout and divided by a replica's `weight` (its relative capacity):
- queued work: prompt tokens still waiting for prefill plus output tokens still to decode;
- uncached: the prompt tokens this replica would have to prefill for the request (prompt less its
  cached prefix);
- cost = uncached + queued work, the score of the cache-aware policies.

`round_robin` keeps a counter: the one piece of state a policy holds (documented in docs/fleet.md).
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar, Protocol

from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest


class NoHealthyReplica(Exception):
    """The snapshot has no healthy replica to route to."""


class Policy(Protocol):
    name: ClassVar[str]

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str: ...


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() of str is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little")


def healthy_or_raise(snapshot: FleetSnapshot) -> list[ReplicaState]:
    healthy = snapshot.healthy()
    if not healthy:
        known = [r.replica_id for r in snapshot.replicas]
        raise NoHealthyReplica(f"no healthy replica among {known}")
    return healthy


def queued_work(replica: ReplicaState) -> float:
    return replica.queued_work_tokens / max(replica.weight, 1e-9)


def uncached_tokens(request: RouteRequest, replica: ReplicaState) -> int:
    return max(request.prompt_tokens - replica.cached_prefix_tokens, 0)


def cost(request: RouteRequest, replica: ReplicaState) -> float:
    return (uncached_tokens(request, replica) + replica.queued_work_tokens) / max(replica.weight, 1e-9)


def tie_break(request: RouteRequest, replica: ReplicaState) -> int:
    return stable_hash(request.request_id, replica.replica_id)


def least_loaded_of(request: RouteRequest, replicas: list[ReplicaState]) -> ReplicaState:
    return min(replicas, key=lambda r: (queued_work(r), r.in_flight, tie_break(request, r)))


def cheapest_of(request: RouteRequest, replicas: list[ReplicaState]) -> ReplicaState:
    return min(replicas, key=lambda r: (cost(request, r), queued_work(r), tie_break(request, r)))


class RoundRobin:
    """Each healthy replica in turn, in snapshot order."""
    name: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        return healthy[next(self._counter) % len(healthy)].replica_id


class LeastLoaded:
    """The replica with the fewest outstanding tokens of work (then the fewest requests in flight)."""
    name: ClassVar[str] = "least_loaded"

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        return least_loaded_of(request, healthy_or_raise(snapshot)).replica_id


@lru_cache(maxsize=128)
def hash_ring(replica_ids: tuple[str, ...], virtual_nodes: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(sorted points, owner of each point): every replica owns `virtual_nodes` points on a 64-bit ring.
    Cached by membership, so the ring is built once per set of healthy replicas, not once per request."""
    points = sorted((stable_hash("ring", replica_id, vnode), replica_id)
                    for replica_id in replica_ids for vnode in range(virtual_nodes))
    return tuple(p for p, _ in points), tuple(owner for _, owner in points)


def ring_owner(key: str, replica_ids: tuple[str, ...], virtual_nodes: int) -> str:
    points, owners = hash_ring(tuple(sorted(replica_ids)), virtual_nodes)
    index = bisect.bisect_right(points, stable_hash("key", key)) % len(points)
    return owners[index]


class SessionAffinity:
    """Consistent hashing of the session key onto a ring of the healthy replicas: a session stays on its
    replica (and its KV cache) while that replica lives; when one leaves, only its sessions move.
    Requests without a session key go to the least loaded replica."""
    name: ClassVar[str] = "session"

    def __init__(self, virtual_nodes: int = 64) -> None:
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        self.virtual_nodes = virtual_nodes

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        if not request.session_key:
            return least_loaded_of(request, healthy).replica_id
        return ring_owner(request.session_key, tuple(r.replica_id for r in healthy), self.virtual_nodes)


class PrefixAware:
    """The replica with the lowest cost (uncached prompt tokens + queued work tokens).

    Hot-prefix guard: when the cheapest replica's queued work exceeds the least loaded replica's by more
    than `max_imbalance_tokens`, the request spills to the cheapest replica within that bound (the least
    loaded one always is), so one popular prefix cannot pile every request onto one replica.
    """
    name: ClassVar[str] = "prefix"

    def __init__(self, max_imbalance_tokens: int = 4096) -> None:
        if max_imbalance_tokens < 0:
            raise ValueError(f"max_imbalance_tokens must be >= 0, got {max_imbalance_tokens}")
        self.max_imbalance_tokens = max_imbalance_tokens

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        best = cheapest_of(request, healthy)
        lightest = queued_work(least_loaded_of(request, healthy))
        if queued_work(best) - lightest <= self.max_imbalance_tokens:
            return best.replica_id
        within = [r for r in healthy if queued_work(r) - lightest <= self.max_imbalance_tokens]
        return cheapest_of(request, within).replica_id


class TwoChoice:
    """DualMap-like: two candidate replicas from two independent hashes of the prompt's leading block(s),
    the cheaper of the two by cost. Requests sharing a prefix share their two candidates, so the prefix is
    cached in at most two places, yet load can still shift between them.

    Candidates come from rendezvous hashing (the replica with the highest hash of (key, salt, replica)),
    so membership changes move only the keys of the replicas that came or went. A prompt shorter than
    one block has no prefix key and uses its request id: plain power-of-two-choices.

    SLO guard: estimated TTFT = (prefill tokens queued on the replica + uncached tokens) / its prefill
    speed; when that exceeds the request's TTFT SLO (or `default_ttft_slo_ms`), the request goes to the
    least loaded replica instead, if the estimate there meets the SLO. Without a known speed or SLO the guard
    is off.
    """
    name: ClassVar[str] = "two_choice"

    def __init__(self, key_blocks: int = 1, default_ttft_slo_ms: float | None = None,
                 default_prefill_tokens_per_s: float = 0.0) -> None:
        if key_blocks < 1:
            raise ValueError(f"key_blocks must be >= 1, got {key_blocks}")
        self.key_blocks = key_blocks
        self.default_ttft_slo_ms = default_ttft_slo_ms
        self.default_prefill_tokens_per_s = default_prefill_tokens_per_s

    def prefix_key(self, request: RouteRequest) -> str:
        if request.block_hashes:
            return f"prefix:{request.block_hashes[min(self.key_blocks, len(request.block_hashes)) - 1]}"
        return f"request:{request.request_id}"

    def candidates(self, request: RouteRequest, healthy: list[ReplicaState]) -> list[ReplicaState]:
        key = self.prefix_key(request)
        first = max(healthy, key=lambda r: stable_hash(key, 1, r.replica_id))
        others = [r for r in healthy if r.replica_id != first.replica_id]
        if not others:
            return [first]
        return [first, max(others, key=lambda r: stable_hash(key, 2, r.replica_id))]

    def estimated_ttft_ms(self, request: RouteRequest, replica: ReplicaState) -> float | None:
        speed = replica.prefill_tokens_per_s or self.default_prefill_tokens_per_s
        if speed <= 0:
            return None
        return 1000.0 * (replica.waiting_prefill_tokens + uncached_tokens(request, replica)) / speed

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        chosen = cheapest_of(request, self.candidates(request, healthy))
        slo_ms = request.ttft_slo_ms if request.ttft_slo_ms is not None else self.default_ttft_slo_ms
        estimate = self.estimated_ttft_ms(request, chosen)
        if slo_ms is None or estimate is None or estimate <= slo_ms:
            return chosen.replica_id
        fallback = least_loaded_of(request, healthy)
        # Move only when the move rescues the SLO: a request that misses it either way is better off
        # where its prefix is cached, since scattering it adds prefill work to the whole fleet.
        fallback_estimate = self.estimated_ttft_ms(request, fallback)
        if fallback_estimate is not None and fallback_estimate <= slo_ms:
            return fallback.replica_id
        return chosen.replica_id


@dataclass(frozen=True)
class PolicyOptions:
    """Tunables shared by the live router and the simulator; each policy takes the ones it needs."""
    virtual_nodes: int = 64
    max_imbalance_tokens: int = 4096
    key_blocks: int = 1
    default_ttft_slo_ms: float | None = None
    default_prefill_tokens_per_s: float = 0.0


_FACTORIES: dict[str, Callable[[PolicyOptions], Policy]] = {
    RoundRobin.name: lambda o: RoundRobin(),
    LeastLoaded.name: lambda o: LeastLoaded(),
    SessionAffinity.name: lambda o: SessionAffinity(o.virtual_nodes),
    PrefixAware.name: lambda o: PrefixAware(o.max_imbalance_tokens),
    TwoChoice.name: lambda o: TwoChoice(o.key_blocks, o.default_ttft_slo_ms, o.default_prefill_tokens_per_s),
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_policy(name: str, options: PolicyOptions | None = None) -> Policy:
    if name not in _FACTORIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {list(POLICY_NAMES)}")
    return _FACTORIES[name](options or PolicyOptions())
