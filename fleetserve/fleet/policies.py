"""Routing policies: pure functions of (request, fleet snapshot) -> replica id (invariant 2).

The live router and the simulated fleet call the same objects. Every policy considers only the healthy
replicas of the snapshot and raises NoHealthyReplica when there are none. Ties are broken by a hash of
(request id, replica id), so an idle fleet spreads requests instead of piling them on the first replica,
and the same request against the same snapshot always gets the same answer.

Work, cost and the other measures policies share are in `fleetserve.fleet.policy_basics`; the `bucket`
policy, which carries a capacity plan, is in `fleetserve.fleet.bucket_policy`.

`round_robin` keeps a counter and `two_choice` the recent traffic share of prompt prefixes: the state a
policy holds (documented in docs/fleet.md).
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, ClassVar

from fleetserve.fleet.bucket_policy import BucketPolicy
from fleetserve.fleet.key_heat import KeyHeat
from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policy_basics import (
    Policy,
    cheapest_of,
    healthy_or_raise,
    least_loaded_of,
    queued_work,
    stable_hash,
    uncached_tokens,
)
from fleetserve.fleet.routing_plan import RoutingPlan
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest


class RoundRobin:
    """Each healthy replica in turn, in snapshot order: the load-blind reference."""
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


def ring_order(key: str, replica_ids: tuple[str, ...], virtual_nodes: int) -> list[str]:
    """The replicas in the order the key meets them walking the ring clockwise from its point."""
    points, owners = hash_ring(tuple(sorted(replica_ids)), virtual_nodes)
    start = bisect.bisect_right(points, stable_hash("key", key))
    order: dict[str, None] = {}
    for offset in range(len(owners)):
        order.setdefault(owners[(start + offset) % len(owners)])
        if len(order) == len(replica_ids):
            break
    return list(order)


def load_bound(request: RouteRequest, healthy: list[ReplicaState], epsilon: float) -> float:
    """`1 + epsilon` times the fleet's mean queued work per unit of weight, the request's own counted: the
    most a replica may hold and still take a request under bounded loads (`SessionAffinity`)."""
    work = request.prompt_tokens + request.max_tokens
    total_weight = sum(max(r.weight, 1e-9) for r in healthy)
    return (1 + epsilon) * (sum(r.queued_work_tokens for r in healthy) + work) / total_weight


class SessionAffinity:
    """Consistent hashing of the session key onto a ring of the healthy replicas: a session stays on its
    replica (and its KV cache) while that replica lives; when one leaves, only its sessions move.
    Requests without a session key go to the least loaded replica.

    Bounded loads (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", as in
    Envoy and HAProxy): a replica takes the request only if its queued work is within `1 + load_epsilon`
    times the fleet's mean with the request counted (weights counted too); otherwise the walk goes on around
    the ring to the next replica that has room. A session moves only while its replica is overloaded, and
    every session's overflow lands in the same place. `load_epsilon=None` turns the bound off.
    """
    name: ClassVar[str] = "session"

    def __init__(self, virtual_nodes: int = 64, load_epsilon: float | None = 0.25) -> None:
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        if load_epsilon is not None and not load_epsilon >= 0:
            raise ValueError(f"load_epsilon must be >= 0 (or None: no bound), got {load_epsilon}")
        self.virtual_nodes = virtual_nodes
        self.load_epsilon = load_epsilon

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        if not request.session_key:
            return least_loaded_of(request, healthy).replica_id
        replica_ids = tuple(r.replica_id for r in healthy)
        if self.load_epsilon is None:
            return ring_order(request.session_key, replica_ids, self.virtual_nodes)[0]
        bound = load_bound(request, healthy, self.load_epsilon)
        by_id = {r.replica_id: r for r in healthy}
        for replica_id in ring_order(request.session_key, replica_ids, self.virtual_nodes):
            if queued_work(by_id[replica_id]) <= bound:
                return replica_id
        return least_loaded_of(request, healthy).replica_id


def estimated_ttft_ms(request: RouteRequest, replica: ReplicaState, prefill_tokens_per_s: float) -> float | None:
    """(Prefill tokens queued on the replica + the request's uncached tokens) / its prefill speed; None when
    no speed is known."""
    if prefill_tokens_per_s <= 0:
        return None
    return 1000.0 * (replica.waiting_prefill_tokens + uncached_tokens(request, replica)) / prefill_tokens_per_s


@dataclass(frozen=True)
class SLOGuard:
    """DualMap's SLO-aware switch: keep the cache-affine choice unless its estimated TTFT misses the TTFT
    SLO (the request's, else `default_ttft_slo_ms`) and the least loaded replica's estimate meets it. A
    request that misses its SLO either way stays where its prefix is cached, since scattering it adds
    prefill work to the whole fleet. Without a known SLO the guard does nothing.

    A replica's prefill speed is the one the router learnt from its times to first byte; a replica that
    has served nothing yet (the idle one the guard would move to) is credited with the mean learnt speed
    of the others, per unit of weight, else `default_prefill_tokens_per_s`.
    """
    default_ttft_slo_ms: float | None = None
    default_prefill_tokens_per_s: float = 0.0

    def prefill_speed(self, replica: ReplicaState, healthy: list[ReplicaState]) -> float:
        if replica.prefill_tokens_per_s > 0:
            return replica.prefill_tokens_per_s
        learnt = [r.prefill_tokens_per_s / max(r.weight, 1e-9) for r in healthy if r.prefill_tokens_per_s > 0]
        if learnt:
            return replica.weight * sum(learnt) / len(learnt)
        return self.default_prefill_tokens_per_s

    def apply(self, request: RouteRequest, chosen: ReplicaState, healthy: list[ReplicaState]) -> ReplicaState:
        slo_ms = request.ttft_slo_ms if request.ttft_slo_ms is not None else self.default_ttft_slo_ms
        if slo_ms is None:
            return chosen
        estimate = estimated_ttft_ms(request, chosen, self.prefill_speed(chosen, healthy))
        if estimate is None or estimate <= slo_ms:
            return chosen
        fallback = least_loaded_of(request, healthy)
        fallback_estimate = estimated_ttft_ms(request, fallback, self.prefill_speed(fallback, healthy))
        if fallback_estimate is not None and fallback_estimate <= slo_ms:
            return fallback
        return chosen


class PrefixAware:
    """The replica with the lowest cost (uncached prompt tokens + queued work tokens), then the SLO guard.

    The cost bounds how far a popular prefix can pile work onto the replicas that cache it: once a
    replica's queue is longer than the others' by more than the prefix, the next request is cheaper
    elsewhere (and caches the prefix there too).

    Optional imbalance guard, SGLang's cache-aware balance test in tokens of work: when the cheapest
    replica's queued work exceeds the least loaded replica's by more than `max_imbalance_tokens` *and* is
    more than `max_imbalance_ratio` times it, the request goes to the cheapest replica within those bounds
    instead. Off by default (`max_imbalance_tokens=None`): measured in the policy suite it only ever moved
    requests off the replica that held their context, most harmfully long conversations when every
    replica is busy (docs/fleet.md, "Long conversations").
    """
    name: ClassVar[str] = "prefix"

    def __init__(self, max_imbalance_tokens: int | None = None, max_imbalance_ratio: float = 1.5,
                 slo_guard: SLOGuard | None = None) -> None:
        if max_imbalance_tokens is not None and max_imbalance_tokens < 0:
            raise ValueError(f"max_imbalance_tokens must be >= 0, got {max_imbalance_tokens}")
        if not max_imbalance_ratio >= 1:
            raise ValueError(f"max_imbalance_ratio must be >= 1, got {max_imbalance_ratio}")
        self.max_imbalance_tokens = max_imbalance_tokens
        self.max_imbalance_ratio = max_imbalance_ratio
        self.slo_guard = slo_guard or SLOGuard()

    def balanced(self, replica: ReplicaState, lightest: float) -> bool:
        work = queued_work(replica)
        return (self.max_imbalance_tokens is None or work - lightest <= self.max_imbalance_tokens
                or work <= self.max_imbalance_ratio * lightest)

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        best = cheapest_of(request, healthy)
        if self.max_imbalance_tokens is not None:
            lightest = queued_work(least_loaded_of(request, healthy))
            if not self.balanced(best, lightest):
                best = cheapest_of(request, [r for r in healthy if self.balanced(r, lightest)])
        return self.slo_guard.apply(request, best, healthy).replica_id


class TwoChoice:
    """DualMap-like: two candidate replicas from two independent hashes of the prompt's key prefix, the
    cheaper of the two by cost. Requests sharing that prefix share their two candidates, so it is cached
    in at most two places, yet load can still shift between them.

    Adaptive key length (DualMap's answer to skewed prefixes): the key is the prompt's block hash at depth
    `key_blocks`, or deeper (twice as deep each time) while the prefix up to there is hot, i.e. carries more
    than `hot_key_factor` replicas' fair share (1 / healthy replicas) of recent requests. A prefix that
    every request shares (a chat template's header, a common system prompt) would otherwise give the whole
    fleet's traffic the same two candidates; going deeper keys on what tells requests apart (the session's
    first message, the document), while a prefix that carries a fair share keeps its two homes. The shares
    are the one piece of state this policy keeps (`fleetserve.fleet.key_heat`); `hot_key_factor=0` turns the
    adaptation off.

    Candidates come from rendezvous hashing (the replica with the highest hash of (key, salt, replica)),
    so membership changes move only the keys of the replicas that came or went. A prompt shorter than
    one block has no prefix key and uses its request id: plain power-of-two-choices.

    Then the SLO guard (`SLOGuard`): the least loaded replica instead when the chosen one's estimated TTFT
    misses the SLO and the least loaded one's meets it.
    """
    name: ClassVar[str] = "two_choice"

    def __init__(self, key_blocks: int = 1, slo_guard: SLOGuard | None = None, hot_key_factor: float = 1.0,
                 heat_half_life: float = 256.0) -> None:
        if key_blocks < 1:
            raise ValueError(f"key_blocks must be >= 1, got {key_blocks}")
        if not hot_key_factor >= 0:
            raise ValueError(f"hot_key_factor must be >= 0 (0 turns the adaptive key off), got {hot_key_factor}")
        self.key_blocks = key_blocks
        self.slo_guard = slo_guard or SLOGuard()
        self.hot_key_factor = hot_key_factor
        self.heat = KeyHeat(heat_half_life)

    def prefix_key(self, request: RouteRequest, num_replicas: int = 1) -> str:
        hashes = request.block_hashes
        if not hashes:
            return f"request:{request.request_id}"
        depth = min(self.key_blocks, len(hashes))
        if self.hot_key_factor == 0:
            return f"prefix:{hashes[depth - 1]}"
        hot_share = self.hot_key_factor / max(num_replicas, 1)
        probed = [hashes[depth - 1]]
        while depth < len(hashes) and self.heat.share(probed[-1]) > hot_share:
            depth = min(2 * depth, len(hashes))
            probed.append(hashes[depth - 1])
        self.heat.count(probed)
        return f"prefix:{probed[-1]}"

    def candidates(self, request: RouteRequest, healthy: list[ReplicaState]) -> list[ReplicaState]:
        key = self.prefix_key(request, len(healthy))
        first = max(healthy, key=lambda r: stable_hash(key, 1, r.replica_id))
        others = [r for r in healthy if r.replica_id != first.replica_id]
        if not others:
            return [first]
        return [first, max(others, key=lambda r: stable_hash(key, 2, r.replica_id))]

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        healthy = healthy_or_raise(snapshot)
        chosen = cheapest_of(request, self.candidates(request, healthy))
        return self.slo_guard.apply(request, chosen, healthy).replica_id


@dataclass(frozen=True)
class PolicyOptions:
    """Tunables shared by the live router and the simulator; each policy takes the ones it needs."""
    virtual_nodes: int = 64
    session_load_epsilon: float | None = 0.25
    max_imbalance_tokens: int | None = None
    max_imbalance_ratio: float = 1.5
    key_blocks: int = 1
    default_ttft_slo_ms: float | None = None
    default_prefill_tokens_per_s: float = 0.0
    hot_key_factor: float = 1.0
    routing_plan: RoutingPlan | None = None  # for `bucket`: the plan `fleetserve plan` wrote
    offline_gate: OfflineGate = OfflineGate()  # where offline requests go, and when they wait at the router

    def slo_guard(self) -> SLOGuard:
        return SLOGuard(self.default_ttft_slo_ms, self.default_prefill_tokens_per_s)


def bucket_policy(options: PolicyOptions) -> BucketPolicy:
    if options.routing_plan is None:
        raise ValueError("the bucket policy routes by a capacity plan: pass --plan PLAN.json (a file written by "
                         "`fleetserve plan --json`)")
    return BucketPolicy(options.routing_plan)


_FACTORIES: dict[str, Callable[[PolicyOptions], Policy]] = {
    RoundRobin.name: lambda o: RoundRobin(),
    LeastLoaded.name: lambda o: LeastLoaded(),
    SessionAffinity.name: lambda o: SessionAffinity(o.virtual_nodes, o.session_load_epsilon),
    PrefixAware.name: lambda o: PrefixAware(o.max_imbalance_tokens, o.max_imbalance_ratio, o.slo_guard()),
    TwoChoice.name: lambda o: TwoChoice(o.key_blocks, o.slo_guard(), o.hot_key_factor),
    BucketPolicy.name: bucket_policy,
}

PLAN_POLICY_NAMES: tuple[str, ...] = (BucketPolicy.name,)  # these need PolicyOptions.routing_plan
POLICY_NAMES: tuple[str, ...] = tuple(name for name in _FACTORIES if name not in PLAN_POLICY_NAMES)
ALL_POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def available_policy_names(options: PolicyOptions) -> tuple[str, ...]:
    """The policies these options can build: those of a plan only when they carry one."""
    return ALL_POLICY_NAMES if options.routing_plan is not None else POLICY_NAMES


def make_policy(name: str, options: PolicyOptions | None = None) -> Policy:
    if name not in _FACTORIES:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {list(ALL_POLICY_NAMES)}")
    return _FACTORIES[name](options or PolicyOptions())
