import json

import pytest

from fleetserve.cli import main
from fleetserve.perf.profiled import ProfiledModel

LLAMA_70B = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 8192,
             "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "max_position_embeddings": 8192}
LLAMA_8B = {**LLAMA_70B, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32}


def test_sim_writes_the_bench_serve_result_and_plots(tmp_path, model_config, capsys):
    out, plots, log = tmp_path / "sim.json", tmp_path / "plots", tmp_path / "requests.jsonl"
    code = main(["sim", "--synthetic", "rate=20,n=200,prompt=uniform:64:1024,output=uniform:8:128",
                 "--fleet", "h100:2,l4:2", "--model-config", str(model_config), "--slo", "ttft=200,tpot=50",
                 "--json", str(out), "--plot", str(plots), "--requests-out", str(log), "--timeline", str(plots),
                 "--timeline-interval", "1"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["completed"] == 200 and result["slo_attainment"] is not None
    assert set(result["sim"]["hardware"]) == {"h100", "l4"}
    assert result["config"]["simulated"] is True and result["config"]["fleet"] == "h100:2,l4:2"
    assert (plots / "latency_cdf.png").is_file() and (plots / "timeline.png").is_file()
    timeline = json.loads((plots / "replica_timeline.json").read_text())
    assert len(timeline["replicas"]) == 4 and (plots / "replica_timeline.png").is_file()
    assert len(log.read_text().splitlines()) == 200


def test_a_trace_replays_with_speedup(tmp_path, model_config, capsys):
    trace = "tests/data/azure_llm_2023_conv_head300.csv"
    code = main(["sim", "--trace", trace, "--speedup", "10", "--num-requests", "100", "--fleet", "a100:2",
                 "--model-config", str(model_config), "--json", str(tmp_path / "out.json")])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out.json").read_text())["num_requests"] == 100


@pytest.mark.parametrize("args, message", [
    (["--fleet", "tpu:4"], "unknown hardware 'tpu'"),
    (["--fleet", "h100:0"], "bad count 0"),
    (["--fleet", "l4:2", "--model-config", "{big}"], "does not fit on l4"),
    (["--fleet", "h100:1", "--perf", "{missing}"], "profile not found"),
    (["--fleet", "h100:1", "--perf", "{profile}"], "profiles were measured on ['cpu']"),
    (["--fleet", "cpu:1", "--perf", "{profile}", "--model-config", "{big}"], "measured with another model"),
])
def test_bad_input_is_a_clear_error(tmp_path, model_config, capsys, args, message):
    big = tmp_path / "llama-70b.json"
    big.write_text(json.dumps(LLAMA_70B))
    profile = tmp_path / "profile.json"
    ProfiledModel({"const": 0.01}, 10_000, "cpu", {"model_config": {"vocab_size": 128256, "hidden_size": 4096}}
                  ).save(profile)
    args = [arg.format(big=big, profile=profile, missing=tmp_path / "nope.json") for arg in args]
    if "--model-config" not in args:
        args += ["--model-config", str(model_config)]
    code = main(["sim", "--synthetic", "rate=1,n=5", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_an_empty_trace_is_a_clear_error(tmp_path, model_config, capsys):
    trace = tmp_path / "empty.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    assert main(["sim", "--trace", str(trace), "--fleet", "h100:1", "--model-config", str(model_config)]) == 2
    assert "no requests" in capsys.readouterr().err
