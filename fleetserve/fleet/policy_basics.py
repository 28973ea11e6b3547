"""What every routing policy stands on: the policy protocol, the no-healthy-replica error, a hash that is the
same in every process, and the measures of load and cost.

Work is measured in tokens throughout and divided by a replica's `weight` (its relative capacity):
- queued work: prompt tokens still waiting for prefill plus output tokens still to decode;
- uncached: the prompt tokens this replica would have to prefill for the request (prompt less its
  cached prefix);
- cost = uncached + queued work, the score of the cache-aware policies.
Ties are broken by a hash of (request id, replica id), so an idle fleet spreads requests instead of piling
them on the first replica, and the same request against the same snapshot always gets the same answer.
"""
from __future__ import annotations

import hashlib
from typing import ClassVar, Protocol

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
