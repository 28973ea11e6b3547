"""One simulation run, end to end: replicas for a fleet, the routing policy, the replay, and the result in
the JSON shape of `fleetserve bench serve` (so `bench compare` and the plots take it as they are)."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetserve.bench.metrics import SLO, RequestRecord
from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policies import Policy
from fleetserve.perf.model import PerfModel
from fleetserve.sim.autoscaling import SimAutoscaler, sim_autoscaler
from fleetserve.sim.build import FleetSpec, build_replicas
from fleetserve.sim.config import Autoscaling, Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.fleet import Arrival, SimFleet
from fleetserve.sim.kv_transfers import KVTransfers
from fleetserve.sim.replica import SimReplica
from fleetserve.sim.timeline import ReplicaTimeline
from fleetserve.speculative.stats import SpeculationStats
from fleetserve.workload.spec import Workload


@dataclass
class SimulationRun:
    records: list[RequestRecord]
    replicas: list[SimReplica]
    simulated_s: float
    wall_s: float
    cpu_s: float
    timeline: ReplicaTimeline | None = None
    offline_held: int = 0  # offline requests that waited at the router for a replica with room
    offline_held_s: float = 0.0  # their waits, in all
    transfers: KVTransfers | None = None  # with replica roles: the remote prefills and their KV transfers
    scaler: SimAutoscaler | None = None  # with autoscaling: replicas over time, GPU-hours, actions

    def stats(self) -> dict[str, Any]:
        """Per hardware: replicas, perf model, steps (simulated, in full, as decode segments), preemptions,
        utilization (busy time over the simulated span), prefix-cache hit rate; with speculative decoding, the
        drafted and accepted tokens; with replica roles, each role's replicas apart ("h100:prefill") and the
        prefills and KV transfers (`disaggregation`); and the simulator's speed."""
        by_hardware: dict[str, list[SimReplica]] = defaultdict(list)
        for replica in self.replicas:
            name = replica.hardware_name if replica.role == "mixed" else f"{replica.hardware_name}:{replica.role}"
            by_hardware[name].append(replica)
        hardware = {}
        scaler = self.scaler
        for name, group in by_hardware.items():
            queried = sum(r.kv.prefix_cache_queries for r in group)
            hardware[name] = {
                **({"role": group[0].role} if group[0].role != "mixed" else {}),
                "replicas": len(group), "perf_model": group[0].perf.name, "kv_blocks": group[0].kv.num_blocks,
                "steps": sum(r.num_steps for r in group), "full_steps": sum(r.num_full_steps for r in group),
                "decode_segments": sum(r.num_segments for r in group),
                "preemptions": sum(r.scheduler.num_preemptions for r in group),
                "utilization": (sum(r.busy_s for r in group) / (len(group) * self.simulated_s)
                                if self.simulated_s > 0 and scaler is None else _alive_utilization(group, scaler)),
                "prefix_cache_hit_rate": sum(r.kv.prefix_cache_hits for r in group) / queried if queried else None,
            }
        speculation = _speculation_stats(self.replicas)
        disaggregation = self.disaggregation_stats()
        return {"hardware": hardware, **({"speculation": speculation} if speculation is not None else {}),
                **({"disaggregation": disaggregation} if disaggregation is not None else {}),
                **({"autoscaling": scaler.stats(self.simulated_s)} if scaler is not None else {}),
                "simulated_s": self.simulated_s, "offline_held_requests": self.offline_held,
                "offline_held_s": self.offline_held_s, "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "requests_per_cpu_s": len(self.records) / self.cpu_s if self.cpu_s > 0 else None}


    def disaggregation_stats(self) -> dict[str, Any] | None:
        """Remote and local prefills, KV transfers (tokens, bytes, mean time from a prefill's end to the KV's
        arrival) and imports recomputed for lack of blocks; None for a fleet of mixed replicas."""
        if self.transfers is None or all(replica.role == "mixed" for replica in self.replicas):
            return None
        return self.transfers.stats.as_dict(self.transfers.link,
                                            sum(replica.num_import_recomputes for replica in self.replicas))


def _alive_utilization(group: list[SimReplica], scaler: SimAutoscaler | None) -> float | None:
    """With autoscaling, busy time over the time the replicas were alive (from start order to stop)."""
    if scaler is None:
        return None
    alive = sum(scaler.alive_s[scaler.fleet.index_of[r.replica_id]] for r in group) if scaler.fleet else 0.0
    return sum(r.busy_s for r in group) / alive if alive > 0 else None


def _speculation_stats(replicas: list[SimReplica]) -> dict[str, Any] | None:
    """The fleet's drafted and accepted tokens, as vLLM counts them; None without speculation."""
    stats = [r.speculation.stats for r in replicas if r.speculation is not None]
    if not stats:
        return None
    total = SpeculationStats()
    for one in stats:
        total.add(one)
    return total.as_dict()


def simulate(arrivals: list[Arrival] | Workload, fleet: FleetSpec, perf_by_hardware: Mapping[str, PerfModel],
             policy: Policy, model_max_len: int, config: ReplicaConfig | None = None,
             options: SimOptions | None = None, timeline_interval_s: float | None = None,
             offline_gate: OfflineGate | None = None, disaggregation: Disaggregation | None = None,
             autoscaling: Autoscaling | None = None) -> SimulationRun:
    """Replay `arrivals` on `fleet` (`parse_fleet_spec`'s entries, roles included) to the end.

    With `timeline_interval_s`, also sample every replica's state on that grid (`SimulationRun.timeline`).
    `offline_gate` places offline requests and holds them at the router (default: OfflineGate()).
    `disaggregation`: the prefill/decode rule and KV link, required when the fleet has prefill replicas:

        fleet = parse_fleet_spec("h100:2:prefill,h100:6:decode")
        link = KVLink.of(default_link_kind(fleet), model_config)
        run = simulate(workload, fleet, perf, make_policy("least_loaded"), max_len,
                       disaggregation=Disaggregation(link, DisaggregationRule("conditional")))
        run.stats()["disaggregation"]

    `autoscaling`: the fleet (one hardware, mixed replicas; its count is where it starts) grows and shrinks as
    the live fleet's autoscaler decides (fleetserve.sim.autoscaling); `run.stats()["autoscaling"]`.
    """
    if not len(arrivals):
        raise ValueError("nothing to simulate: the workload has no requests")
    replicas = build_replicas(fleet, perf_by_hardware, config or ReplicaConfig(), model_max_len, options)
    timeline = ReplicaTimeline(replicas, timeline_interval_s) if timeline_interval_s is not None else None
    scaler = sim_autoscaler(autoscaling, replicas) if autoscaling is not None else None
    sim = SimFleet(replicas, policy, timeline, offline_gate, disaggregation, scaler)
    started, cpu_started = time.perf_counter(), time.process_time()
    records = sim.run(arrivals)
    if scaler is not None:
        scaler.finish(sim.clock)
    return SimulationRun(records, replicas, sim.clock, time.perf_counter() - started,
                         time.process_time() - cpu_started, timeline, sim.num_held, sim.held_s, sim.transfers,
                         scaler)


def sim_result(run: SimulationRun, workload: Workload, config: dict[str, Any], slo: SLO | None) -> dict[str, Any]:
    """The `bench serve` result dict (summary, not_sent, config, workload) plus `sim`: the run's stats."""
    from fleetserve.bench.serve import build_result
    result = build_result(run.records, workload, config, slo)
    result["sim"] = run.stats()
    return result
