"""`--max-step-ms` in the simulator: the same scheduler bounds each step by the replica's performance model."""
from __future__ import annotations

import json

import pytest

from fleetserve.cli import main
from fleetserve.engine.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.perf.step_shape import shape_of
from fleetserve.sim.config import ReplicaConfig

from sim_helpers import LinearPerf, make_replicas

WORKLOAD = "rate=6,n=60,prompt=uniform:256:1024,output=uniform:32:128,seed=3"


def sim(tmp_path, name: str, *flags: str) -> dict:
    out = tmp_path / f"{name}.json"
    code = main(["sim", "--synthetic", WORKLOAD, "--fleet", "cpu:1", "--json", str(out), *flags])
    assert code == 0
    return json.loads(out.read_text())


def test_the_bound_shortens_the_stalls_of_decoding_streams(tmp_path):
    free = sim(tmp_path, "free")
    bounded = sim(tmp_path, "bounded", "--max-step-ms", "60")
    assert bounded["completed"] == free["completed"] == 60
    assert bounded["itl_ms"]["p99"] < free["itl_ms"]["p99"]
    assert bounded["config"]["replica"]["max_step_ms"] == 60
    assert "max_step_ms" not in free["config"]["replica"]


def test_decode_skipping_gives_the_same_results_under_the_bound(tmp_path):
    skipped = sim(tmp_path, "skipped", "--max-step-ms", "60")
    stepped = sim(tmp_path, "stepped", "--max-step-ms", "60", "--no-skip")
    for key in ("ttft_ms", "itl_ms", "e2e_ms", "duration_s"):
        assert skipped[key] == stepped[key], key


def test_every_step_of_a_replica_fits_its_bound():
    perf = LinearPerf(const=0.01, per_prefill_token=1e-3, per_decode=1e-3)
    (replica,) = make_replicas(perf=perf, config=ReplicaConfig(max_step_ms=80), skip=False)
    assert replica.scheduler.step_cost is perf
    prompts = [600, 40, 900, 300]
    for index, length in enumerate(prompts):
        request = Request(f"r{index}", list(range(index * 1000, index * 1000 + length)),
                          SamplingParams(max_tokens=50, ignore_eos=True))
        replica.scheduler.add_request(request)
    chunked = False
    while replica.scheduler.has_unfinished():
        out = replica.scheduler.schedule()
        assert perf.step_time(shape_of(out)) <= 0.08
        chunked |= any(1 < item.num_tokens < 512 - len(out.scheduled) for item in out.scheduled)
        replica.scheduler.update_from_output(out, {item.request.request_id: 0 for item in out.scheduled
                                                   if item.samples})
    assert chunked


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_a_bad_bound_is_a_clear_error(value, capsys):
    with pytest.raises(SystemExit):
        main(["sim", "--synthetic", WORKLOAD, "--fleet", "cpu:1", "--max-step-ms", value])
    assert "--max-step-ms" in capsys.readouterr().err
