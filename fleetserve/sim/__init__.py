"""The simulator: the engine's own Scheduler and KVCacheManager and the router's policies, driven by a
virtual clock and a performance model, to replay traces on fleets of any size.

    from fleetserve.sim import simulate
    run = simulate(workload, parse_fleet_spec("h100:8"), {"h100": RooflineModel(config, h100)},
                   make_policy("least_loaded"), model_max_len=8192)
    summarize(run.records)

A fleet spec with replica roles ("h100:2:prefill,h100:6:decode") also takes
`disaggregation=Disaggregation(KVLink.of(...), DisaggregationRule(...))`: see `simulate` and docs/sim.md.

Cost grows with events (arrivals, finishes, prefill chunks) times the requests in flight on the replica
concerned, not with tokens: a run of pure decode steps is planned and applied at once by the engine's
scheduler (begin_decode_run / apply_decode_run, fleetserve/engine/decode_run_start.py) and only timed
here (fleetserve.sim.segment). On one core that is about 1,300-1,500 simulated requests a second for the
Azure conversation trace's mix on 64 H100 replicas at 1,000,000 requests (docs/benchmarks.md, "Simulator
speed").
"""
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.fleet import Arrival, SimFleet, workload_arrivals
from fleetserve.sim.replica import SimReplica
from fleetserve.sim.simulate import SimulationRun, simulate

__all__ = ["Arrival", "Disaggregation", "ReplicaConfig", "SimFleet", "SimOptions", "SimReplica", "SimulationRun",
           "simulate", "workload_arrivals"]
