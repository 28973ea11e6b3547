"""Re-check a plan on the whole workload: simulate its fleet with the `bucket` policy, request by request.

The capacities behind a plan come from each bucket alone; the fleet sees the buckets mixed, bursts and
all. When the planned fleet's SLO attainment falls short of the target, one device is added to the pool
whose requests met the SLO least often, and the fleet is simulated again, until the target holds or the
round limit is reached (then the result says so, with the last attainment). Rounds are cached with the
capacities (`capacity_cache`), keyed by a digest of the whole workload, the fleet, the routing and every
setting, so a second plan, or a single-type fleet equal to the plan's, is not simulated again.

A fleet with replica roles (devices keyed "h100:prefill", "h100:decode" beside "h100") is simulated with its
disaggregation rule and KV link; requests count toward the pool of the replica that decodes them. A short
pool with role devices gets a prefill device when more of its misses are TTFT misses than not (prompts
wait for prefill), else a decode device; a pool of mixed devices gets a mixed one.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fleetserve.bench.metrics import SLO, summarize
from fleetserve.fleet.policies import Policy, PolicyOptions, make_policy
from fleetserve.fleet.routing_plan import RoutingPlan
from fleetserve.fleet.snapshot import FleetSnapshot, RouteRequest
from fleetserve.perf.hardware import FleetEntry, Hardware
from fleetserve.perf.model import PerfModel
from fleetserve.plan.capacity_cache import CapacityCache, capacity_key
from fleetserve.plan.disaggregated_units import split_key
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.simulate import simulate
from fleetserve.workload.spec import Workload


class RecordingPolicy:
    """A policy that remembers where it sent each request."""
    name: ClassVar[str] = "recording"

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.chosen: dict[str, str] = {}

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        replica_id = self.inner.choose(request, snapshot)
        self.chosen[request.request_id] = replica_id
        return replica_id


DisaggregationFor = Callable[[list[FleetEntry]], Disaggregation | None]


@dataclass
class RecheckRound:
    devices: dict[str, int]
    summary: dict[str, Any]  # the metrics module's summary (`slo_attainment` among it)
    attainment_by_pool: dict[str, float]
    ttft_miss_share_by_pool: dict[str, float] = field(default_factory=dict)  # of a pool's misses, TTFT misses


@dataclass
class Recheck:
    target: float
    rounds: list[RecheckRound] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return bool(self.rounds) and (self.rounds[-1].summary["slo_attainment"] or 0.0) >= self.target

    def to_jsonable(self) -> dict[str, Any]:
        last = self.rounds[-1]
        return {"target_attainment": self.target, "met": self.met, "devices": last.devices,
                "slo_attainment": last.summary["slo_attainment"], "summary": last.summary,
                "rounds": [{"devices": r.devices, "slo_attainment": r.summary["slo_attainment"],
                            "attainment_by_pool": r.attainment_by_pool} for r in self.rounds]}


def fleet_of(devices: Mapping[str, int], catalog: Mapping[str, Hardware]) -> list[FleetEntry]:
    """Devices keyed "hardware" (mixed) or "hardware:role" as fleet entries."""
    entries = []
    for key, count in devices.items():
        if count > 0:
            hardware, role = split_key(key)
            entries.append(FleetEntry(catalog[hardware], count, role))
    return entries


def workload_digest(workload: Workload) -> str:
    digest = hashlib.sha256()
    for spec in workload:
        digest.update(repr((spec.arrival_s, spec.prompt_tokens, spec.output_tokens, spec.prefix_block_tokens,
                            spec.prefix_ids)).encode())
    return digest.hexdigest()


def simulate_round(workload: Workload, devices: dict[str, int], routing: RoutingPlan,
                   catalog: Mapping[str, Hardware], perf: Mapping[str, PerfModel], model_max_len: int,
                   config: ReplicaConfig, slo: SLO, disaggregation_for: DisaggregationFor | None = None
                   ) -> RecheckRound:
    policy = RecordingPolicy(make_policy("bucket", PolicyOptions(routing_plan=routing)))
    fleet = fleet_of(devices, catalog)
    run = simulate(workload, fleet, perf, policy, model_max_len, config, SimOptions(record_token_times=False),
                   disaggregation=disaggregation_for(fleet) if disaggregation_for is not None else None)
    summary = summarize(run.records, None, slo)
    pool_of = {replica.replica_id: replica.hardware_name for replica in run.replicas}
    ttft_only = SLO(ttft_ms=slo.ttft_ms)
    met: dict[str, list[bool]] = defaultdict(list)
    ttft_misses: dict[str, int] = defaultdict(int)
    for record in run.records:
        pool = pool_of[policy.chosen[record.request_id]]
        met[pool].append(slo.met_by(record))
        if slo.ttft_ms is not None and not ttft_only.met_by(record):
            ttft_misses[pool] += 1
    by_pool = {pool: sum(flags) / len(flags) for pool, flags in sorted(met.items())}
    misses = {pool: len(flags) - sum(flags) for pool, flags in met.items()}
    ttft_share = {pool: ttft_misses[pool] / misses[pool] for pool in sorted(misses) if misses[pool]}
    return RecheckRound(dict(devices), summary, by_pool, ttft_share)


def device_to_add(pool: str, devices: Mapping[str, int], ttft_miss_share: float) -> str:
    """The device key a short pool gets (the module docstring says which)."""
    if devices.get(f"{pool}:decode", 0) == 0:
        return pool
    return f"{pool}:prefill" if ttft_miss_share > 0.5 else f"{pool}:decode"


def recheck(workload: Workload, devices: Mapping[str, int], routing: RoutingPlan, catalog: Mapping[str, Hardware],
            perf: Mapping[str, PerfModel], model_max_len: int, config: ReplicaConfig, slo: SLO, target: float,
            max_rounds: int = 8, progress: Callable[[str], None] | None = None,
            cache: CapacityCache | None = None, disaggregation_for: DisaggregationFor | None = None) -> Recheck:
    """`devices` keyed "hardware" or "hardware:role"; `disaggregation_for(fleet)`: the rule and KV link of a
    fleet with prefill replicas."""
    result = Recheck(target)
    current = {name: count for name, count in devices.items() if count > 0}
    workload_key = workload_digest(workload) if cache is not None else ""
    for _ in range(max_rounds + 1):
        fleet = fleet_of(current, catalog)
        disaggregation = disaggregation_for(fleet) if disaggregation_for is not None else None
        # Only a fleet with roles adds its rule and link to the key, so the keys of mixed fleets stay as they were.
        roles_key = {} if disaggregation is None else {
            "rule": dataclasses.asdict(disaggregation.rule), "link": dataclasses.asdict(disaggregation.link)}
        names = {entry.hardware.name for entry in fleet}
        key = capacity_key({
            "recheck": workload_key, "devices": sorted(current.items()), "routing": routing.to_jsonable(),
            "hardware": {name: dataclasses.asdict(catalog[name]) for name in names},
            "perf": {name: perf[name].name for name in names}, "max_len": model_max_len,
            "replica": dataclasses.asdict(config), "slo": dataclasses.asdict(slo), **roles_key})
        cached = cache.get(key) if cache is not None else None
        if isinstance(cached, dict):
            round_ = RecheckRound(dict(current), cached["summary"], cached["attainment_by_pool"],
                                  cached.get("ttft_miss_share_by_pool", {}))
        else:
            round_ = simulate_round(workload, current, routing, catalog, perf, model_max_len, config, slo,
                                    disaggregation_for)
            if cache is not None:
                cache.put(key, {"summary": round_.summary, "attainment_by_pool": round_.attainment_by_pool,
                                **({"ttft_miss_share_by_pool": round_.ttft_miss_share_by_pool}
                                   if disaggregation is not None else {})})
        result.rounds.append(round_)
        summary, by_pool = round_.summary, round_.attainment_by_pool
        if progress is not None:
            progress(f"re-check {current}: SLO attainment {summary['slo_attainment']:.3f} "
                     f"(by pool {', '.join(f'{p} {a:.3f}' for p, a in by_pool.items())})")
        if result.met or not by_pool:
            break
        short = min(by_pool, key=lambda pool: (by_pool[pool], catalog[pool].price_per_hour_usd))
        added = device_to_add(short, current, round_.ttft_miss_share_by_pool.get(short, 0.0))
        current[added] = current.get(added, 0) + 1
    return result
