"""Replicas for a fleet spec ("h100:8,l4:16"): one SimReplica per device, each with its hardware's model.

A replica's `weight` (its relative capacity, which load-aware policies divide work by) is its modelled
prefill speed at the full token budget relative to the slowest hardware in the fleet.
"""
from __future__ import annotations

from collections.abc import Mapping

from fleetserve.perf.hardware import Hardware
from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.sim.acceptance import AcceptanceDraws
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.replica import SimReplica


def prefill_tokens_per_s(perf: PerfModel, budget: int) -> float:
    return budget / perf.step_time(StepShape(budget, 0, budget, 1))


def build_replicas(fleet: list[tuple[Hardware, int]], perf_by_hardware: Mapping[str, PerfModel],
                   config: ReplicaConfig, model_max_len: int, options: SimOptions | None = None
                   ) -> list[SimReplica]:
    missing = [hardware.name for hardware, _ in fleet if hardware.name not in perf_by_hardware]
    if missing:
        raise ValueError(f"no performance model for hardware {missing}; have {sorted(perf_by_hardware)}")
    speeds = {hardware.name: prefill_tokens_per_s(perf_by_hardware[hardware.name], config.max_num_batched_tokens)
              for hardware, _ in fleet}
    slowest = min(speeds.values())
    # One set of acceptance draws for the fleet: a trace's rates go to requests in the order they reach it.
    acceptance = AcceptanceDraws(config.spec_acceptance) if config.spec_acceptance is not None else None
    replicas = []
    for hardware, count in fleet:
        perf = perf_by_hardware[hardware.name]
        for index in range(count):
            replicas.append(SimReplica(f"{hardware.name}-{index}", hardware.name, perf, config, model_max_len,
                                       options, weight=speeds[hardware.name] / slowest, acceptance=acceptance))
    return replicas
