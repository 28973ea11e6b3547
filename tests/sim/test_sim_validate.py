"""`fleetserve sim --validate`: a live run's arrivals replayed on the simulator, summaries compared. The "live"
run here is itself simulated, so replaying it with the same performance model must agree exactly."""
import json

import pytest

from fleetserve.bench.serve import build_result, write_request_log
from fleetserve.cli import main
from fleetserve.fleet.policies import make_policy
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.profiled import ProfiledModel
from fleetserve.sim.simulate import simulate
from fleetserve.sim.validate import load_live_run
from fleetserve.workload.synthetic import synthetic_workload


@pytest.fixture
def profile(tmp_path, llama3_8b):
    model = ProfiledModel({"const": 0.03, "prefill_tokens": 4e-4, "decode_seqs": 2e-3, "decode_context": 1e-6},
                          40_000, "cpu", {"model": "tiny", "model_config": llama3_8b.to_dict()})
    path = tmp_path / "profile.json"
    model.save(path)
    return path


@pytest.fixture
def live_run(tmp_path, profile):
    workload = synthetic_workload(80, 6, prompt_len="uniform:20:400", output_len="uniform:5:100", seed=2,
                                  shared_prefix_groups=2, shared_prefix_tokens=64)
    run = simulate(workload, parse_fleet_spec("cpu:1"), {"cpu": ProfiledModel.load(profile)},
                   make_policy("least_loaded"), 8192)
    log = tmp_path / "requests.jsonl"
    write_request_log(run.records, workload, log)
    result = build_result(run.records, workload, {"requests_out": str(log)})
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    return path


def test_replaying_a_run_with_its_own_model_reproduces_it(tmp_path, profile, live_run, capsys):
    out = tmp_path / "validation.json"
    code = main(["sim", "--validate", str(live_run), "--fleet", "cpu:1", "--perf", str(profile),
                 "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())["validation"]["rows"]
    assert {row["metric"] for row in rows} >= {"ttft_ms.mean", "ttft_ms.p50", "ttft_ms.p90", "tpot_ms.mean",
                                               "tpot_ms.p50", "tpot_ms.p90", "request_throughput"}
    for row in rows:
        assert row["error"] == pytest.approx(0, abs=1e-9), row
    assert "simulated against live" in capsys.readouterr().out


def test_the_live_arrivals_keep_send_times_lengths_and_prefixes(live_run):
    live = load_live_run(live_run)
    assert len(live.arrivals) == 80
    record = live.records[5]
    arrival = next(a for a in live.arrivals if a.spec.request_id == record.request_id)
    assert arrival.sent_s == record.sent_s and arrival.spec.output_tokens == record.output_tokens
    assert arrival.spec.prefix_ids


def test_a_run_without_a_named_request_log_says_what_is_missing(tmp_path, live_run):
    result = json.loads(live_run.read_text())
    del result["config"]["requests_out"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="config.requests_out is missing.*--requests"):
        load_live_run(bare)
    assert len(load_live_run(bare, tmp_path / "requests.jsonl").arrivals) == 80


def test_validate_refuses_workload_shaping_flags(live_run, capsys):
    assert main(["sim", "--validate", str(live_run), "--fleet", "cpu:1", "--speedup", "2"]) == 2
    assert "--speedup cannot be used with --validate" in capsys.readouterr().err
