import json
import math

import pytest

from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.perf.profiled import PROFILE_FORMAT, ProfiledModel, StepSample
from fleetserve.perf.step_shape import mixed_shape

TRUE = {"const": 0.02, "batched": 0.03, "tiled": 0.012, "dense": 0.02, "prefill_tokens": 3e-4, "decode_seqs": 1.5e-3,
        "prefill_seqs": 4e-3, "decode_context": 2e-6, "prefill_pairs": 5e-9}


def shapes() -> list[StepShape]:
    grid = [StepShape(0, seqs, seqs * (ctx + 1)) for seqs in (1, 4, 8, 16, 64) for ctx in (64, 512, 1024)]
    grid += [StepShape(chunk, 0, chunk + ctx, 1) for chunk in (32, 128, 512) for ctx in (0, 1024)]
    grid += [mixed_shape(256, 0, 8, 8 * 513), mixed_shape(448, 1024, 32, 32 * 513), mixed_shape(64, 256, 63, 63 * 600)]
    return grid


def test_fit_recovers_the_coefficients_of_noiseless_steps():
    truth = ProfiledModel(TRUE, 10_000, "cpu")
    samples = [StepSample.of(shape, truth.step_time(shape)) for shape in shapes()]
    fitted = ProfiledModel.fit(samples, 10_000, "cpu", {"threads": 2})
    for name, value in TRUE.items():
        assert fitted.coefficients[name] == pytest.approx(value, rel=1e-4)
    assert fitted.fit_errors()["max_relative_error"] < 1e-6
    assert isinstance(fitted, PerfModel) and fitted.name == "profiled/cpu"


def test_fit_never_goes_negative():
    samples = [StepSample(0, seqs, seqs * 100, 0, 0.05) for seqs in (1, 2, 4, 8, 12, 16, 32, 64, 128, 200)]
    fitted = ProfiledModel.fit(samples, 1000, "cpu")
    assert all(value >= 0 for value in fitted.coefficients.values())
    assert fitted.step_time(StepShape(0, 8, 800)) == pytest.approx(0.05, rel=0.01)


def test_save_and_load_round_trip(tmp_path):
    model = ProfiledModel(TRUE, 46_592, "cpu", {"model": "m", "dtype": "float32"},
                          [StepSample(0, 1, 65, 0, 0.03)])
    path = tmp_path / "profile.json"
    model.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == PROFILE_FORMAT and data["kv_capacity_tokens"] == 46_592
    loaded = ProfiledModel.load(path)
    assert loaded.coefficients == TRUE and loaded.kv_capacity_tokens() == 46_592
    assert loaded.measured_on["dtype"] == "float32" and loaded.samples == model.samples
    assert loaded.step_time(StepShape(100, 3, 400, 1)) == model.step_time(StepShape(100, 3, 400, 1))


def test_empty_step_is_free_and_decode_runs_match_step_time():
    model = ProfiledModel(TRUE, 1000, "cpu")
    assert model.step_time(StepShape(0, 0, 0)) == 0.0
    assert model.decode_step_durations(4, 400, 3) == [model.step_time(StepShape(0, 4, 400 + 4 * i))
                                                      for i in range(3)]


@pytest.mark.parametrize("content, message", [
    (None, "profile not found"),
    ("not json", "not a JSON profile"),
    ({"format": "other"}, "not a `fleetserve profile` result"),
    ({"format": PROFILE_FORMAT, "hardware": "cpu"}, "lacks ['coefficients', 'kv_capacity_tokens']"),
    ({"format": PROFILE_FORMAT, "hardware": "cpu", "kv_capacity_tokens": 10, "coefficients": {"const": -1}},
     "must be finite and >= 0"),
    ({"format": PROFILE_FORMAT, "hardware": "cpu", "kv_capacity_tokens": 10, "coefficients": {"magic": 1}},
     "unknown features ['magic']"),
    ({"format": PROFILE_FORMAT, "hardware": "cpu", "kv_capacity_tokens": 0, "coefficients": {"const": 1}},
     "positive integer"),
])
def test_bad_profiles_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError) as error:
        ProfiledModel.load(path)
    assert message in str(error.value)


def test_too_few_samples_to_fit_is_an_error():
    with pytest.raises(ValueError, match="at least"):
        ProfiledModel.fit([StepSample(0, 1, 10, 0, 0.01)], 100, "cpu")


def test_fit_errors_of_a_model_without_samples_are_nan():
    assert math.isnan(ProfiledModel({"const": 1.0}, 10, "cpu").fit_errors()["mean_relative_error"])
