"""Replicas for a fleet spec ("h100:8,l4:16", "h100:2:prefill,h100:6:decode"): one SimReplica per device,
each with its hardware's model and its role.

A replica's `weight` (its relative capacity, which load-aware policies divide work by) is its modelled
prefill speed at the full token budget relative to the slowest hardware in the fleet. Replica ids are
"h100-0", "h100-1", ... for mixed replicas and "h100-prefill-0", "h100-decode-0", ... for the others.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleetserve.perf.hardware import Hardware, fleet_entries
from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.sim.acceptance import AcceptanceDraws
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.replica import SimReplica

FleetSpec = Sequence[tuple[Hardware, int] | tuple[Hardware, int, str]]  # parse_fleet_spec's entries, or plain tuples


def prefill_tokens_per_s(perf: PerfModel, budget: int) -> float:
    return budget / perf.step_time(StepShape(budget, 0, budget, 1))


def build_replicas(fleet: FleetSpec, perf_by_hardware: Mapping[str, PerfModel], config: ReplicaConfig,
                   model_max_len: int, options: SimOptions | None = None) -> list[SimReplica]:
    entries = fleet_entries(fleet)
    missing = [entry.hardware.name for entry in entries if entry.hardware.name not in perf_by_hardware]
    if missing:
        raise ValueError(f"no performance model for hardware {missing}; have {sorted(perf_by_hardware)}")
    speeds = {entry.hardware.name: prefill_tokens_per_s(perf_by_hardware[entry.hardware.name],
                                                        config.max_num_batched_tokens) for entry in entries}
    slowest = min(speeds.values())
    # One set of acceptance draws for the fleet: a trace's rates go to requests in the order they reach it.
    acceptance = AcceptanceDraws(config.spec_acceptance) if config.spec_acceptance is not None else None
    replicas = []
    for hardware, count, role in entries:
        perf = perf_by_hardware[hardware.name]
        prefix = hardware.name if role == "mixed" else f"{hardware.name}-{role}"
        for index in range(count):
            replicas.append(SimReplica(f"{prefix}-{index}", hardware.name, perf, config, model_max_len, options,
                                       weight=speeds[hardware.name] / slowest, acceptance=acceptance, role=role))
    return replicas
