"""The simulator: the engine's own Scheduler and KVCacheManager and the router's policies, driven by a
virtual clock and a performance model, to replay traces on fleets of any size (DESIGN.md invariant 1).

    from fleetserve.sim import simulate
    run = simulate(workload, parse_fleet_spec("h100:8"), {"h100": RooflineModel(config, h100)},
                   make_policy("least_loaded"), model_max_len=8192)
    summarize(run.records)
"""
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.fleet import Arrival, SimFleet, workload_arrivals
from fleetserve.sim.replica import SimReplica
from fleetserve.sim.simulate import SimulationRun, simulate

__all__ = ["Arrival", "ReplicaConfig", "SimFleet", "SimOptions", "SimReplica", "SimulationRun", "simulate",
           "workload_arrivals"]
