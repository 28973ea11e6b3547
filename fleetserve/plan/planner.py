"""The planner: the cheapest mix of hardware that serves a workload within its SLO.

1. Cut the workload into length buckets (`workload_buckets`).
2. For every (hardware, bucket) find by simulation the rate one replica sustains within the SLO
   (`capacity`), cached on disk (`capacity_cache`).
3. Solve Mélange's integer program and the split variant over those capacities (`assignment`), and the
   cheapest single-type fleet by the same program restricted to one type.
4. Re-check a plan by simulating the whole workload on its fleet with the `bucket` policy (`recheck`).

With replica roles (`PlanProblem.units`), disaggregated units (`disaggregated_units`) are candidates beside
single devices: their capacities are simulated with the problem's disaggregation rule and KV link, and the
program rents them like one more hardware type.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetserve.fleet.disaggregation import DisaggregationRule
from fleetserve.fleet.routing_plan import Buckets, RoutingPlan
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import FleetEntry, Hardware
from fleetserve.perf.kv_link import KVLink, default_link_kind
from fleetserve.perf.model import PerfModel
from fleetserve.plan.assignment import Assignment, Infeasible, PlanInput, solve_melange
from fleetserve.plan.capacity import BucketCapacity, CapacitySearch, sample_of
from fleetserve.plan.capacity_cache import CapacityCache, capacity_key
from fleetserve.plan.disaggregated_units import (
    DisaggregatedUnit,
    devices_with_roles,
    fleet_spec_with_roles,
    pool_shares,
)
from fleetserve.plan.workload_buckets import bucket_members, bucket_shares, workload_buckets
from fleetserve.sim.config import Disaggregation, ReplicaConfig
from fleetserve.workload.spec import Workload


@dataclass
class PlanProblem:
    workload: Workload
    hardware: list[Hardware]
    perf: Mapping[str, PerfModel]  # by hardware name
    model_config: ModelConfig
    config: ReplicaConfig
    search: CapacitySearch
    input_edges: list[int] | None = None
    output_edges: list[int] | None = None
    slice_factor: int = 1
    units: list[DisaggregatedUnit] = field(default_factory=list)  # none: plan mixed devices only
    rule: DisaggregationRule = DisaggregationRule()
    kv_link: str | None = None  # None: the link a fleet of its size would have (default_link_kind)
    kv_dtype: str = "bfloat16"

    @property
    def units_by_name(self) -> dict[str, DisaggregatedUnit]:
        return {unit.name: unit for unit in self.units}

    def disaggregation_for(self, fleet: Sequence[FleetEntry]) -> Disaggregation | None:
        """The rule and KV link for a fleet with prefill replicas; None for one without."""
        if all(entry.role != "prefill" for entry in fleet):
            return None
        link = KVLink.of(self.kv_link or default_link_kind(fleet), self.model_config, self.kv_dtype)
        return Disaggregation(link, self.rule)

    @property
    def total_rate(self) -> float:
        duration = self.workload.duration_s
        if not duration > 0:
            raise ValueError("the workload's requests all arrive at once; give it a rate (--rate) to plan for")
        return len(self.workload) / duration


@dataclass
class Capacities:
    buckets: Buckets
    shares: list[list[float]]
    by_hardware: dict[str, list[list[float]]]  # hardware -> [input bucket][output bucket] -> req/s per replica
    members: dict[tuple[int, int], int] = field(default_factory=dict)  # requests per bucket
    cache_hits: int = 0
    cache_misses: int = 0


def find_capacities(problem: PlanProblem, cache: CapacityCache,
                    progress: Callable[[str], None] | None = None) -> Capacities:
    buckets = workload_buckets(problem.workload, problem.input_edges, problem.output_edges)
    members = bucket_members(problem.workload, buckets)
    rows, columns = buckets.shape
    by_hardware: dict[str, list[list[float]]] = {}
    candidates: list[tuple[str, Hardware, DisaggregatedUnit | None]] = [
        *((hardware.name, hardware, None) for hardware in problem.hardware),
        *((unit.name, unit.hardware, unit) for unit in problem.units)]
    for name, hardware, unit in candidates:
        perf = problem.perf[hardware.name]
        fleet = unit.fleet() if unit is not None else None
        disaggregation = problem.disaggregation_for(fleet) if fleet is not None else None
        searcher = BucketCapacity(hardware, perf, problem.model_config.max_position_embeddings, problem.config,
                                  problem.search, fleet, disaggregation)
        # Only a unit's key names its roles and rule, so the keys of single devices stay as they were.
        unit_key = {} if disaggregation is None or unit is None else {
            "unit": [unit.prefill, unit.decode], "rule": dataclasses.asdict(disaggregation.rule),
            "link": dataclasses.asdict(disaggregation.link)}
        grid = [[0.0] * columns for _ in range(rows)]
        for bucket, specs in members.items():
            sample = sample_of(specs, problem.search.sample_requests)
            key = capacity_key({
                "model": problem.model_config.to_dict(), "hardware": dataclasses.asdict(hardware),
                "perf": perf.name, "replica": dataclasses.asdict(problem.config),
                "search": dataclasses.asdict(problem.search), **unit_key,
                "sample": [(s.prompt_tokens, s.output_tokens, s.prefix_block_tokens, s.prefix_ids) for s in sample]})
            value = cache.get(key)
            if not isinstance(value, (int, float)):
                value = searcher.capacity(sample)
                cache.put(key, value)
            grid[bucket[0]][bucket[1]] = value
            if progress is not None:
                progress(f"{name} {buckets.label(bucket)}: {value:.3g} req/s per "
                         f"{'replica' if unit is None else 'unit'}")
        by_hardware[name] = grid
    cache.save()
    return Capacities(buckets, bucket_shares(members, buckets), by_hardware,
                      {bucket: len(specs) for bucket, specs in members.items()}, cache.hits, cache.misses)


def plan_input(problem: PlanProblem, capacities: Capacities, hardware: list[Hardware] | None = None) -> PlanInput:
    """The program's input over these hardware types (default: all), with their disaggregated units."""
    chosen = hardware or problem.hardware
    names = {hw.name for hw in chosen}
    costs = {hw.name: hw.price_per_hour_usd for hw in chosen}
    costs.update({unit.name: unit.price_per_hour_usd for unit in problem.units if unit.hardware.name in names})
    return PlanInput(costs=costs, capacity={name: capacities.by_hardware[name] for name in costs},
                     shares=capacities.shares, total_rate=problem.total_rate, slice_factor=problem.slice_factor)


def cheapest_single_type(problem: PlanProblem, capacities: Capacities) -> Assignment | None:
    best: Assignment | None = None
    for hardware in problem.hardware:
        try:
            assignment = solve_melange(plan_input(problem, capacities, [hardware]))
        except Infeasible:
            continue
        if best is None or assignment.cost_per_hour < best.cost_per_hour:
            best = assignment
    return best


def routing_plan(capacities: Capacities, assignment: Assignment,
                 units: Mapping[str, DisaggregatedUnit] | None = None) -> RoutingPlan:
    """The shares per bucket and hardware pool (a unit's shares go to its hardware's pool)."""
    if not units:
        return RoutingPlan(capacities.buckets, dict(assignment.bucket_shares))
    return RoutingPlan(capacities.buckets, {bucket: pool_shares(shares, units)
                                            for bucket, shares in assignment.bucket_shares.items()})


def assignment_summary(assignment: Assignment, capacities: Capacities,
                       units: Mapping[str, DisaggregatedUnit] | None = None) -> dict[str, Any]:
    """`fleet` is a `--fleet` spec, roles included; `devices` counts hardware types and units by name."""
    units = units or {}
    return {"fleet": fleet_spec_with_roles(devices_with_roles(assignment.devices, units)) if units
            else assignment.fleet_spec, "devices": dict(assignment.devices),
            "cost_per_hour": assignment.cost_per_hour,
            "utilization": dict(assignment.utilization),
            "routing": routing_plan(capacities, assignment, units).to_jsonable()}
