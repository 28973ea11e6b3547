"""Online and offline work on one simulated fleet: the router holds offline requests while no replica has
room (the live router's OfflineGate), the replicas' schedulers put online requests first, and every offline
request still completes."""
from __future__ import annotations

import statistics

from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policies import make_policy
from fleetserve.perf.model import StepShape
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload import arriving_at, merged, synthetic_workload, tagged

from sim_helpers import LinearPerf, make_replicas

ONLINE = synthetic_workload(200, 8.0, prompt_len=256, output_len=64, seed=3)
BATCH = arriving_at(tagged(synthetic_workload(200, 10.0, prompt_len=512, output_len=128, seed=4), "offline"),
                    float("inf"))  # all at once: alone it would keep both replicas busy for twice as long


def run(workload, gate: OfflineGate):
    fleet = SimFleet(make_replicas(2), make_policy("least_loaded"), offline_gate=gate)
    return fleet, fleet.run(workload)


def online_ttfts(records) -> list[float]:
    return sorted(r.first_token_s - r.arrival_s for r in records if r.service_class == "online")


def test_offline_work_waits_at_the_router_and_fills_the_room_online_work_leaves():
    gate = OfflineGate(online_busy_in_flight=8, offline_max_in_flight=16)
    _, alone = run(ONLINE, gate)
    fleet, mixed = run(merged([ONLINE, BATCH]), gate)
    assert all(record.success for record in mixed) and len(mixed) == 400
    assert fleet.num_held > 0 and not fleet.held and fleet.held_s > 0
    # Online requests never wait behind offline ones: beside offline work their first token comes at most the
    # step in progress and one full step (the budget shared with offline tokens) later.
    full_step = LinearPerf().step_time(StepShape(prefill_tokens=512, decode_seqs=0, context_tokens=512))
    assert statistics.mean(online_ttfts(mixed)) < statistics.mean(online_ttfts(alone)) + 2 * full_step
    assert max(online_ttfts(mixed)) < 0.5
    # The offline batch finished in the time online work left: well before it would have alone plus online.
    offline_end = max(r.end_s for r in mixed if r.service_class == "offline")
    assert offline_end < max(r.end_s for r in alone) * 2


def test_no_replica_holds_more_offline_requests_than_the_gate_allows():
    gate = OfflineGate(online_busy_in_flight=8, offline_max_in_flight=3)
    replicas = make_replicas(2)
    most = {replica.replica_id: 0 for replica in replicas}
    for replica in replicas:
        submit = replica.submit

        def watching(tracked, now, replica=replica, submit=submit):
            most[replica.replica_id] = max(most[replica.replica_id], replica.router.offline_in_flight)
            return submit(tracked, now)

        replica.submit = watching  # type: ignore[method-assign]
    fleet = SimFleet(replicas, make_policy("round_robin"), offline_gate=gate)
    records = fleet.run(BATCH)
    assert all(record.success for record in records)
    assert max(most.values()) == 3 and fleet.num_held == 200 - 6
