import pytest

from fleetserve.fleet.policies import POLICY_NAMES, make_policy
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.build import build_replicas
from fleetserve.sim.config import ReplicaConfig
from fleetserve.sim.fleet import Arrival, SimFleet
from fleetserve.sim.simulate import simulate
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import synthetic_workload

from sim_helpers import LinearPerf, make_replicas


def mixed_workload() -> Workload:
    sessions = synthetic_workload(None, 4, sessions=10, turns_per_session=3, think_time_s=1.0,
                                  prompt_len="uniform:10:200", output_len="uniform:1:50", seed=1)
    oversized = [RequestSpec("too-long", 0.3, 8100, 200), RequestSpec("kv-too-small", 0.4, 5000, 100)]
    return Workload(sessions.requests + oversized, "mixed", "test")


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_request_ends_completed_or_refused_with_a_reason(policy):
    replicas = make_replicas(3, LinearPerf(kv_tokens=4096))
    records = SimFleet(replicas, make_policy(policy)).run(mixed_workload())
    assert len(records) == 32
    for record in records:
        assert record.end_s is not None and record.end_s >= record.sent_s
        if record.success:
            assert record.output_tokens >= 1 and record.first_token_s is not None
        else:
            assert record.error_kind and record.error
    failed = {record.request_id: record.error for record in records if not record.success}
    assert set(failed) == {"too-long", "kv-too-small"}
    assert all(not replica.tracked and not replica.scheduler.has_unfinished() for replica in replicas)


def test_sessions_stick_to_a_replica_and_hit_its_prefix_cache():
    replicas = make_replicas(3)
    workload = synthetic_workload(None, 4, sessions=6, turns_per_session=4, think_time_s=2.0,
                                  prompt_len="fixed:100", output_len="fixed:20", seed=2)
    SimFleet(replicas, make_policy("session")).run(workload)
    assert sum(replica.kv.prefix_cache_hits for replica in replicas) > 0


def test_the_router_view_counts_in_flight_requests_and_empties_at_the_end():
    replicas = make_replicas(2)
    fleet = SimFleet(replicas, make_policy("least_loaded"))
    fleet.run(synthetic_workload(50, 100, prompt_len="fixed:64", output_len="fixed:32", seed=0))
    for replica in replicas:
        assert replica.router.in_flight == 0
        assert replica.router.waiting_prefill_tokens == 0 and replica.router.decoding_tokens == 0


def test_least_loaded_spreads_a_burst():
    replicas = make_replicas(4)
    workload = Workload([RequestSpec(f"b{i}", 0.0, 100, 50) for i in range(8)], "burst", "test")
    SimFleet(replicas, make_policy("least_loaded")).run(workload)
    assert [replica.num_steps > 0 for replica in replicas] == [True] * 4


def test_mixed_hardware_fleet_weighs_replicas_by_speed(llama3_8b):
    fleet = parse_fleet_spec("h100:2,l4:1")
    perf = {hardware.name: RooflineModel(llama3_8b, hardware) for hardware, *_ in fleet}
    run = simulate(synthetic_workload(40, 10, seed=4), fleet, perf, make_policy("least_loaded"), 8192)
    weights = {replica.hardware_name: replica.router.weight for replica in run.replicas}
    assert weights["l4"] == 1.0 and weights["h100"] > 2
    assert [replica.replica_id for replica in run.replicas] == ["h100-0", "h100-1", "l4-0"]
    assert all(record.success for record in run.records)
    assert set(run.stats()["hardware"]) == {"h100", "l4"}


def test_a_model_that_cannot_fit_is_an_error_naming_the_hardware():
    llama_70b = ModelConfig(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                            head_dim=128, intermediate_size=28672, vocab_size=128256)
    fleet = parse_fleet_spec("l4:2")
    with pytest.raises(ValueError, match="does not fit on l4"):
        build_replicas(fleet, {"l4": RooflineModel(llama_70b, fleet[0][0])}, ReplicaConfig(), 8192)


def test_an_empty_workload_and_unordered_arrivals_are_errors(llama3_8b):
    fleet = parse_fleet_spec("h100:1")
    perf = {"h100": RooflineModel(llama3_8b, fleet[0][0])}
    with pytest.raises(ValueError, match="no requests"):
        simulate(Workload([], "empty", "test"), fleet, perf, make_policy("round_robin"), 8192)
    spec = RequestSpec("x", 0.0, 10, 10)
    with pytest.raises(ValueError, match="order of sent time"):
        SimFleet(make_replicas(1), make_policy("round_robin")).run([Arrival(spec, 0, 2.0), Arrival(spec, 0, 1.0)])


def test_a_policy_naming_a_stranger_is_an_error():
    class Stranger:
        name = "stranger"

        def choose(self, request, snapshot):
            return "nobody"

    with pytest.raises(ValueError, match="'nobody'"):
        SimFleet(make_replicas(1), Stranger()).run(synthetic_workload(1, 1, seed=0))
