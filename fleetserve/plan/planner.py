"""The planner: the cheapest mix of hardware that serves a workload within its SLO.

1. Cut the workload into length buckets (`workload_buckets`).
2. For every (hardware, bucket) find by simulation the rate one replica sustains within the SLO
   (`capacity`), cached on disk (`capacity_cache`).
3. Solve Mélange's integer program and the split variant over those capacities (`assignment`), and the
   cheapest single-type fleet by the same program restricted to one type.
4. Re-check a plan by simulating the whole workload on its fleet with the `bucket` policy (`recheck`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetserve.fleet.routing_plan import Buckets, RoutingPlan
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import Hardware
from fleetserve.perf.model import PerfModel
from fleetserve.plan.assignment import Assignment, Infeasible, PlanInput, solve_melange
from fleetserve.plan.capacity import BucketCapacity, CapacitySearch, sample_of
from fleetserve.plan.capacity_cache import CapacityCache, capacity_key
from fleetserve.plan.workload_buckets import bucket_members, bucket_shares, workload_buckets
from fleetserve.sim.config import ReplicaConfig
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
    for hardware in problem.hardware:
        perf = problem.perf[hardware.name]
        searcher = BucketCapacity(hardware, perf, problem.model_config.max_position_embeddings, problem.config,
                                  problem.search)
        grid = [[0.0] * columns for _ in range(rows)]
        for bucket, specs in members.items():
            sample = sample_of(specs, problem.search.sample_requests)
            key = capacity_key({
                "model": problem.model_config.to_dict(), "hardware": dataclasses.asdict(hardware),
                "perf": perf.name, "replica": dataclasses.asdict(problem.config),
                "search": dataclasses.asdict(problem.search),
                "sample": [(s.prompt_tokens, s.output_tokens, s.prefix_block_tokens, s.prefix_ids) for s in sample]})
            value = cache.get(key)
            if not isinstance(value, (int, float)):
                value = searcher.capacity(sample)
                cache.put(key, value)
            grid[bucket[0]][bucket[1]] = value
            if progress is not None:
                progress(f"{hardware.name} {buckets.label(bucket)}: {value:.3g} req/s per replica")
        by_hardware[hardware.name] = grid
    cache.save()
    return Capacities(buckets, bucket_shares(members, buckets), by_hardware,
                      {bucket: len(specs) for bucket, specs in members.items()}, cache.hits, cache.misses)


def plan_input(problem: PlanProblem, capacities: Capacities, hardware: list[Hardware] | None = None) -> PlanInput:
    chosen = hardware or problem.hardware
    return PlanInput(costs={hw.name: hw.price_per_hour_usd for hw in chosen},
                     capacity={hw.name: capacities.by_hardware[hw.name] for hw in chosen},
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


def routing_plan(capacities: Capacities, assignment: Assignment) -> RoutingPlan:
    return RoutingPlan(capacities.buckets, dict(assignment.bucket_shares))


def assignment_summary(assignment: Assignment, capacities: Capacities) -> dict[str, Any]:
    return {"fleet": assignment.fleet_spec, "devices": dict(assignment.devices),
            "cost_per_hour": assignment.cost_per_hour,
            "utilization": dict(assignment.utilization),
            "routing": routing_plan(capacities, assignment).to_jsonable()}
