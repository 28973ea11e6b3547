"""The planner from workload to plan: buckets, simulated capacities and their cache, the command end to end."""
import json

import pytest

from fleetserve.bench.metrics import SLO
from fleetserve.cli import main
from fleetserve.fleet.routing_plan import RoutingPlan
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import get_hardware
from fleetserve.perf.roofline import RooflineModel
from fleetserve.plan.capacity import BucketCapacity, CapacitySearch
from fleetserve.plan.capacity_cache import CapacityCache
from fleetserve.plan.planner import PlanProblem, find_capacities
from fleetserve.plan.workload_buckets import bucket_members, bucket_shares, edges_from_lengths, workload_buckets
from fleetserve.sim.config import ReplicaConfig
from fleetserve.workload.spec import Workload
from fleetserve.workload.synthetic import synthetic_workload

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192}
MIX = "rate=20,n=300,prompt=lognormal:600:1.2,output=lognormal:120:0.8,seed=4"


@pytest.fixture
def model_config(tmp_path):
    path = tmp_path / "llama-8b.json"
    path.write_text(json.dumps(LLAMA_8B))
    return path


def small_search(slo: SLO) -> CapacitySearch:
    return CapacitySearch(slo, attainment=0.9, sample_requests=40, iterations=5)


def test_bucket_edges_come_from_the_data_and_every_request_lands_in_one_bucket():
    workload = synthetic_workload(500, rate=10, prompt_len="lognormal:600:1.2", output_len="lognormal:120:0.8",
                                  seed=1)
    assert edges_from_lengths([1, 2, 3, 4, 100], (0.5,)) == (3, 100)
    buckets = workload_buckets(workload)
    assert buckets.input_edges[-1] == max(spec.prompt_tokens for spec in workload)
    members = bucket_members(workload, buckets)
    assert sum(len(specs) for specs in members.values()) == 500
    shares = bucket_shares(members, buckets)
    assert sum(map(sum, shares)) == pytest.approx(1.0)
    # About half of the prompts are at most the median edge.
    assert 0.4 < sum(shares[0]) < 0.6
    given = workload_buckets(workload, [256, 100000], [64, 100000])
    assert given.shape == (2, 2)


def test_capacity_is_higher_on_faster_hardware_and_zero_when_the_slo_cannot_be_met():
    config = ModelConfig(**{k: v for k, v in LLAMA_8B.items() if k != "architectures"})
    specs = synthetic_workload(60, rate=1, prompt_len="uniform:200:400", output_len="uniform:50:100", seed=2).requests

    def capacity(name: str, slo: SLO) -> float:
        hardware = get_hardware(name)
        return BucketCapacity(hardware, RooflineModel(config, hardware), 8192, ReplicaConfig(),
                              small_search(slo)).capacity(specs)

    h100, l4 = capacity("h100", SLO(ttft_ms=500, tpot_ms=100)), capacity("l4", SLO(ttft_ms=500, tpot_ms=100))
    assert h100 > l4 > 0
    # An 8B model cannot produce a token every millisecond on an L4.
    assert capacity("l4", SLO(tpot_ms=1)) == 0.0


def test_capacities_are_cached_on_disk_and_reused(tmp_path):
    config = ModelConfig(**{k: v for k, v in LLAMA_8B.items() if k != "architectures"})
    workload = synthetic_workload(200, rate=10, prompt_len="lognormal:600:1.0", output_len="uniform:20:200", seed=3)
    hardware = [get_hardware("h100"), get_hardware("a10g")]
    problem = PlanProblem(workload, hardware, {hw.name: RooflineModel(config, hw) for hw in hardware}, config,
                          ReplicaConfig(), small_search(SLO(ttft_ms=1000, tpot_ms=100)), [400, 100000], [100, 1000])
    path = tmp_path / "capacities.json"
    first = find_capacities(problem, CapacityCache(path))
    assert first.cache_misses == 8 and first.cache_hits == 0 and path.is_file()
    second = find_capacities(problem, CapacityCache(path))
    assert second.cache_hits == 8 and second.cache_misses == 0
    assert second.by_hardware == first.by_hardware
    # Another SLO is another capacity: nothing is reused.
    problem.search = small_search(SLO(ttft_ms=900, tpot_ms=100))
    assert find_capacities(problem, CapacityCache(path)).cache_misses == 8


def test_a_corrupt_cache_is_set_aside(tmp_path):
    path = tmp_path / "capacities.json"
    path.write_text("{not json")
    cache = CapacityCache(path)
    assert cache.entries == {} and path.with_suffix(".corrupt").is_file()


@pytest.mark.slow
def test_plan_writes_solutions_a_recheck_and_a_routing_plan(tmp_path, model_config, capsys):
    out = tmp_path / "plan.json"
    code = main(["plan", "--synthetic", MIX, "--hardware", "h100,a10g,l4", "--model-config", str(model_config),
                 "--slo", "ttft=1000,tpot=100", "--attainment", "0.9", "--sample-requests", "40",
                 "--cache", str(tmp_path / "cache.json"), "--json", str(out), "--plot", str(tmp_path / "plots")])
    printed = capsys.readouterr()
    assert code == 0, printed.err + printed.out
    result = json.loads(out.read_text())
    solutions = result["solutions"]
    assert {"melange", "split", "single_type"} <= set(solutions)
    assert solutions["split"]["cost_per_hour"] <= solutions["melange"]["cost_per_hour"] + 1e-9
    assert solutions["melange"]["cost_per_hour"] <= solutions["single_type"]["cost_per_hour"] + 1e-9
    recheck = result["recheck"]
    assert recheck["met"] and recheck["slo_attainment"] >= 0.9
    assert recheck["summary"]["num_requests"] == 300  # the metrics module's summary of the whole workload
    routing = RoutingPlan.from_jsonable(result["routing"])
    assert set(routing.pools) <= {"h100", "a10g", "l4"}
    assert (tmp_path / "plots" / "costs.png").is_file()
    # Again: every capacity and every re-check round comes from the cache, with the same answer.
    again = tmp_path / "again.json"
    assert main(["plan", "--synthetic", MIX, "--hardware", "h100,a10g,l4", "--model-config", str(model_config),
                 "--slo", "ttft=1000,tpot=100", "--attainment", "0.9", "--sample-requests", "40",
                 "--cache", str(tmp_path / "cache.json"), "--json", str(again)]) == 0
    second = json.loads(again.read_text())
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] == result["cache"]["misses"]
    assert second["recheck"] == result["recheck"] and second["fleet"] == result["fleet"]
    # The plan file drives the simulator's bucket policy.
    assert main(["sim", "--synthetic", MIX, "--fleet", result["fleet"], "--model-config", str(model_config),
                 "--policy", "bucket", "--plan", str(out)]) == 0


@pytest.mark.parametrize("args, message", [
    (["--hardware", "h100,tpu"], "unknown hardware 'tpu'"),
    (["--hardware", "h100", "--slo", "ttft=1"], "no listed hardware meets the SLO for bucket"),
    (["--hardware", "h100"], "--slo is required"),
    (["--hardware", "l4", "--model-config", "{big}"], "fits none of the listed hardware"),
    (["--hardware", "h100", "--max-model-len", "200"], "requests need more than the 200-token context"),
])
def test_bad_plans_are_clear_errors(tmp_path, model_config, capsys, args, message):
    big = tmp_path / "llama-70b.json"
    big.write_text(json.dumps({**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                               "num_attention_heads": 64}))
    args = [arg.format(big=big) for arg in args]
    if "--model-config" not in args:
        args += ["--model-config", str(model_config)]
    if "--slo" not in args and "--slo is required" not in message:
        args += ["--slo", "ttft=1000,tpot=100"]
    code = main(["plan", "--synthetic", "rate=5,n=40,prompt=uniform:100:300,output=uniform:10:50", "--no-cache",
                 "--sample-requests", "20", *args])
    assert code != 0
    assert message in capsys.readouterr().err


def test_an_empty_trace_is_a_clear_error(tmp_path, capsys, model_config):
    trace = tmp_path / "empty.jsonl"
    trace.write_text("")
    code = main(["plan", "--trace", str(trace), "--hardware", "h100", "--slo", "ttft=1000",
                 "--model-config", str(model_config), "--no-cache"])
    assert code != 0
    error = capsys.readouterr().err.lower()
    assert "empty" in error or "no requests" in error


def test_a_workload_arriving_all_at_once_needs_a_rate():
    workload = Workload(synthetic_workload(5, rate=float("inf"), seed=1).requests, "x", "y")
    problem = PlanProblem(workload, [], {}, ModelConfig(), ReplicaConfig(), small_search(SLO(ttft_ms=1)))
    with pytest.raises(ValueError, match="give it a rate"):
        problem.total_rate
