"""An online workload merged with an offline batch runs through `fleetserve sim` and reports each class; the
engine requests carry the spec's class and priority."""
from __future__ import annotations

import json

import pytest

from fleetserve.cli import main
from fleetserve.fleet.policies import make_policy
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload import arriving_at, merged, synthetic_workload, tagged, with_priority_fraction

from sim_helpers import make_replicas

SMALL_LLAMA = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 2048,
               "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
               "num_key_value_heads": 4, "max_position_embeddings": 2048}


@pytest.fixture
def model_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL_LLAMA))
    return str(path)


def test_a_merged_workload_runs_through_sim_and_reports_each_class(tmp_path, model_config, capsys):
    out, log = tmp_path / "sim.json", tmp_path / "requests.jsonl"
    code = main(["sim", "--synthetic", "rate=20,n=60,prompt=uniform:32:256,output=uniform:4:32",
                 "--offline-synthetic", "rate=1,n=40,prompt=uniform:64:512,output=uniform:16:64",
                 "--offline-at-start", "--high-priority-fraction", "0.1", "--fleet", "cpu:1",
                 "--model-config", model_config, "--slo", "ttft=2000", "--json", str(out), "--requests-out", str(log)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "by service class" in printed.out and "by priority (lower runs first)" in printed.out
    result = json.loads(out.read_text())
    by_class = result["by_class"]
    assert (by_class["online"]["num_requests"], by_class["offline"]["num_requests"]) == (60, 40)
    assert by_class["online"]["completed"] + by_class["offline"]["completed"] == result["completed"] == 100
    assert by_class["online"]["slo_attainment"] is not None
    assert {key: group["num_requests"] for key, group in result["by_priority"].items()} == {"-1": 6, "0": 94}
    assert result["workload"]["service_classes"] == {"online": 60, "offline": 40}
    assert result["config"]["service_classes"]["offline_at_start"] is True
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    offline = [line for line in lines if line.get("service_class") == "offline"]
    assert len(offline) == 40 and all(line["spec"]["service_class"] == "offline" for line in offline)
    assert all(line["arrival_s"] == 0.0 for line in offline)


def test_a_plain_run_has_no_class_split(tmp_path, model_config, capsys):
    out = tmp_path / "sim.json"
    assert main(["sim", "--synthetic", "rate=20,n=20,prompt=fixed:32,output=fixed:4", "--fleet", "cpu:1",
                 "--model-config", model_config, "--json", str(out)]) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert "by_class" not in result and "by_priority" not in result and "service_classes" not in result["config"]


def test_the_engine_requests_carry_the_spec_class_and_priority():
    online = with_priority_fraction(synthetic_workload(20, 10.0, prompt_len=32, output_len=4), 0.5, -2, seed=1)
    batch = arriving_at(tagged(synthetic_workload(10, 10.0, prompt_len=32, output_len=4, seed=1), "offline"), 5.0)
    workload = merged([online, batch])
    replica = make_replicas(1)[0]
    seen = {}
    submit = replica.submit

    def spy(tracked, now):
        params = tracked.request.sampling_params
        seen[tracked.request.request_id] = (params.service_class, params.priority)
        return submit(tracked, now)

    replica.submit = spy  # type: ignore[method-assign]
    records = SimFleet([replica], make_policy("round_robin")).run(workload)
    assert seen == {spec.request_id: (spec.service_class, spec.priority) for spec in workload}
    assert {record.request_id: (record.service_class, record.priority) for record in records} == seen
    assert sum(priority == -2 for _, priority in seen.values()) == 10


def test_validate_refuses_the_service_class_flags(tmp_path, capsys):
    code = main(["sim", "--validate", str(tmp_path / "run.json"), "--fleet", "cpu:1", "--high-priority-fraction", "0.1",
                 "--high-priority", "-3"])
    assert code == 2
    assert "--high-priority-fraction, --high-priority cannot be used with --validate" in capsys.readouterr().err
