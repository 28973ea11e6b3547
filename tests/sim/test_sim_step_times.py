import pytest

from fleetserve.perf.hardware import CATALOG
from fleetserve.perf.model import StepShape, decode_run_shapes
from fleetserve.perf.profiled import ProfiledModel
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.step_times import decode_step_ends

from sim_helpers import LinearPerf


@pytest.mark.parametrize("hardware", ["h100", "l4", "cpu"])
@pytest.mark.parametrize("seqs", [1, 7, 64, 256])
def test_roofline_decode_runs_equal_step_time_exactly(llama3_8b, hardware, seqs):
    model = RooflineModel(llama3_8b, CATALOG[hardware])
    first = seqs * 300 + 5
    expected = [model.step_time(StepShape(0, seqs, first + i * seqs)) for i in range(50)]
    assert model.decode_step_durations(seqs, first, 50) == expected


@pytest.mark.parametrize("model", [
    ProfiledModel({"const": 0.02, "decode_seqs": 1e-3, "decode_context": 2e-6, "prefill_pairs": 1e-8,
                   "batched": 0.01}, 1000, "cpu"),
    LinearPerf(),
], ids=["profiled", "linear"])
def test_every_model_prices_a_decode_run_as_its_steps(model):
    expected = [model.step_time(StepShape(0, 5, 600 + i * 5)) for i in range(10)]
    assert model.decode_step_durations(5, 600, 10) == expected
    assert model.decode_step_durations(5, 600, 0) == []


def test_decode_run_shapes_grow_by_one_token_a_sequence():
    assert list(decode_run_shapes(3, 30, 3)) == [StepShape(0, 3, 30), StepShape(0, 3, 33), StepShape(0, 3, 36)]


@pytest.mark.parametrize("kind", ["linear", "roofline"])
def test_ends_accumulate_like_a_loop(llama3_8b, kind):
    model = LinearPerf() if kind == "linear" else RooflineModel(llama3_8b, CATALOG["l4"])
    now, expected = 1.5, []
    for i in range(20):
        now += model.step_time(StepShape(0, 3, 30 + 3 * i))
        expected.append(now)
    assert decode_step_ends(model, 1.5, 3, 30, 20) == expected
    assert decode_step_ends(model, 1.5, 3, 30, 0) == []
