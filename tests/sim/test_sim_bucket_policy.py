"""The bucket policy in the simulator: replicas are pooled by hardware, and a plan's buckets land on their pools;
`fleetserve sim --policy bucket --plan FILE` runs it from the command line."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_sim_cli import LLAMA_8B

from fleetserve.cli import main
from fleetserve.commands.route import load_routing_plan, policy_options
from fleetserve.fleet.bucket_policy import BucketPolicy
from fleetserve.fleet.routing_plan import Buckets, RoutingPlan
from fleetserve.fleet.snapshot import FleetSnapshot, RouteRequest
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.simulate import simulate
from fleetserve.workload.synthetic import synthetic_workload

# Prompts up to 512 tokens to the L4s, longer ones to the A100.
LONG_TO_A100 = RoutingPlan(Buckets(input_edges=(512, 4096), output_edges=(256,)),
                           {(0, 0): {"l4": 1.0}, (1, 0): {"a100": 1.0}})


class Recording:
    """The bucket policy, noting each request's prompt length and the replica it chose."""

    def __init__(self, policy: BucketPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.choices: list[tuple[int, str]] = []

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str:
        replica_id = self.policy.choose(request, snapshot)
        self.choices.append((request.prompt_tokens, replica_id))
        return replica_id


def test_long_prompts_run_on_the_a100_and_short_ones_on_the_l4s(llama3_8b):
    fleet = parse_fleet_spec("a100-80gb:1,l4:2")
    perf = {hardware.name: RooflineModel(llama3_8b, hardware) for hardware, *_ in fleet}
    workload = synthetic_workload(120, 20, prompt_len="uniform:64:2048", output_len="uniform:8:64", seed=3)
    policy = Recording(BucketPolicy(LONG_TO_A100))
    run = simulate(workload, fleet, perf, policy, 8192)  # type: ignore[arg-type]
    assert {replica.replica_id: replica.router.pool for replica in run.replicas} == {
        "a100-0": "a100", "l4-0": "l4", "l4-1": "l4"}
    assert len(policy.choices) == 120 and all(record.success for record in run.records)
    for prompt_tokens, replica_id in policy.choices:
        assert replica_id.startswith("a100" if prompt_tokens > 512 else "l4"), (prompt_tokens, replica_id)
    served = {replica.replica_id: replica.kv.prefix_cache_queries for replica in run.replicas}
    assert all(served.values()), served  # both L4s take short prompts: least loaded inside the pool


def plan_file(tmp_path, content) -> str:
    path = tmp_path / "plan.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_the_plan_file_is_what_fleetserve_plan_writes_or_a_bare_routing_plan(tmp_path):
    routing = LONG_TO_A100.to_jsonable()
    assert load_routing_plan(plan_file(tmp_path, {"solutions": {}, "routing": routing})) == LONG_TO_A100
    assert load_routing_plan(plan_file(tmp_path, routing)) == LONG_TO_A100


@pytest.mark.parametrize("content, message", [
    (None, "cannot read the plan"),
    ("{not json", "is not JSON"),
    ([1, 2], "holds no routing plan"),
    ({"routing": {"input_edges": [512]}}, "not a routing plan"),
])
def test_a_bad_plan_file_is_a_clear_error_naming_it(tmp_path, content, message):
    path = str(tmp_path / "missing.json") if content is None else plan_file(tmp_path, content)
    with pytest.raises(ValueError, match=message) as error:
        load_routing_plan(path)
    assert path in str(error.value)


def test_policy_options_carry_the_plan(tmp_path):
    args = SimpleNamespace(ttft_slo_ms=None, session_load_factor=1.25, max_imbalance_tokens=None,
                           max_imbalance_ratio=1.5, prefill_tokens_per_s=0.0, hot_key_factor=1.0,
                           online_busy_in_flight=16, offline_max_in_flight=32,
                           plan=plan_file(tmp_path, {"routing": LONG_TO_A100.to_jsonable()}))
    assert policy_options(args).routing_plan == LONG_TO_A100  # type: ignore[arg-type]


def test_sim_routes_by_a_plan_from_the_command_line(tmp_path, capsys):
    model = tmp_path / "llama-8b.json"
    model.write_text(json.dumps(LLAMA_8B))
    out = tmp_path / "sim.json"
    code = main(["sim", "--synthetic", "rate=20,n=60,prompt=uniform:64:2048,output=uniform:8:64",
                 "--fleet", "a100:1,l4:2", "--model-config", str(model), "--policy", "bucket",
                 "--plan", plan_file(tmp_path, {"routing": LONG_TO_A100.to_jsonable()}), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["completed"] == 60 and result["config"]["policy"] == "bucket"


def test_sim_refuses_the_bucket_policy_without_a_plan(tmp_path, capsys):
    model = tmp_path / "llama-8b.json"
    model.write_text(json.dumps(LLAMA_8B))
    code = main(["sim", "--synthetic", "rate=20,n=10", "--fleet", "l4:1", "--model-config", str(model),
                 "--policy", "bucket"])
    assert code != 0 and "--plan PLAN.json" in capsys.readouterr().err
