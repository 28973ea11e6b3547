import pytest

from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import CATALOG, get_hardware
from fleetserve.perf.model import PerfModel, StepShape
from fleetserve.perf.roofline import (
    DEFAULT_STEP_OVERHEAD_S,
    RooflineModel,
    attended_pairs,
    default_activation_reserve_bytes,
)


@pytest.fixture
def llama3_8b() -> ModelConfig:
    return ModelConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, intermediate_size=14336, vocab_size=128256)


@pytest.fixture
def llama3_70b() -> ModelConfig:
    return ModelConfig(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
                       head_dim=128, intermediate_size=28672, vocab_size=128256)


def test_implements_perf_model(llama3_8b):
    model = RooflineModel(llama3_8b, CATALOG["h100"])
    assert isinstance(model, PerfModel)
    assert "h100" in model.name


def test_decode_batch_one_is_memory_bound(llama3_8b):
    h100 = CATALOG["h100"]
    model = RooflineModel(llama3_8b, h100)
    estimate = model.estimate(StepShape(prefill_tokens=0, decode_seqs=1, context_tokens=128))
    assert estimate.bound == "memory"
    weight_time = model.weight_bytes_read_per_step / (h100.memory_bandwidth_bytes_s * 0.8)
    assert model.step_time(StepShape(0, 1, 128)) == pytest.approx(weight_time + model.step_overhead_s, rel=0.01)
    # Llama-3-8B streams ~15 GB of weights a token: a few ms on an H100, not microseconds or seconds.
    assert 0.004 < model.step_time(StepShape(0, 1, 128)) < 0.012


def test_large_prefill_is_compute_bound(llama3_8b):
    h100 = CATALOG["h100"]
    model = RooflineModel(llama3_8b, h100)
    shape = StepShape(prefill_tokens=8192, decode_seqs=0, context_tokens=8192, prefill_seqs=1)
    estimate = model.estimate(shape)
    assert estimate.bound == "compute"
    assert estimate.flops > 2 * model.body_params * 8192
    expected = estimate.flops / (h100.peak_bf16_flops * 0.6) + model.step_overhead_s
    assert model.step_time(shape) == pytest.approx(expected)


def test_flops_count_linear_layers_lm_head_per_sampled_sequence_and_attention(llama3_8b):
    model = RooflineModel(llama3_8b, CATALOG["h100"])
    shape = StepShape(prefill_tokens=512, decode_seqs=0, context_tokens=512, prefill_seqs=1)
    attention = 4 * 32 * 32 * 128 * (512 * 513 / 2)
    expected = 2 * model.body_params * 512 + 2 * 128256 * 4096 * 1 + attention
    assert model.estimate(shape).flops == pytest.approx(expected)


def test_bytes_count_weights_once_plus_kv_read_and_written(llama3_8b):
    model = RooflineModel(llama3_8b, CATALOG["h100"])
    shape = StepShape(prefill_tokens=0, decode_seqs=64, context_tokens=64 * 1000)
    kv_per_token = llama3_8b.kv_bytes_per_token(2)
    expected = model.weight_bytes_read_per_step + kv_per_token * (64 * 1000 + 64)
    assert model.estimate(shape).bytes_moved == pytest.approx(expected)


def test_untied_input_embedding_is_not_streamed_but_tied_one_is(llama3_8b):
    untied = RooflineModel(llama3_8b, CATALOG["h100"])
    assert untied.weight_bytes - untied.weight_bytes_read_per_step == 128256 * 4096 * 2
    llama3_8b.tie_word_embeddings = True
    tied = RooflineModel(llama3_8b, CATALOG["h100"])
    assert tied.weight_bytes_read_per_step == tied.weight_bytes


@pytest.mark.parametrize("hardware", ["h100", "l4", "cpu"])
def test_step_time_grows_with_batch_tokens_and_context(llama3_8b, hardware):
    model = RooflineModel(llama3_8b, CATALOG[hardware])
    by_batch = [model.step_time(StepShape(0, batch, batch * 1024)) for batch in (1, 8, 64, 512, 4096)]
    by_context = [model.step_time(StepShape(0, 32, 32 * context)) for context in (16, 256, 4096, 32768)]
    by_prefill = [model.step_time(StepShape(tokens, 0, tokens, 1)) for tokens in (1, 64, 512, 4096, 16384)]
    mixed = [model.step_time(StepShape(chunk, 32, chunk + 32 * 1024, min(chunk, 1))) for chunk in (0, 256, 2048)]
    for series in (by_batch, by_context, by_prefill, mixed):
        assert series == sorted(series)
        assert series[0] < series[-1]


def test_attended_pairs_are_exact_for_decode_and_single_prefill():
    assert attended_pairs(StepShape(0, 3, 300)) == pytest.approx(300)
    assert attended_pairs(StepShape(100, 0, 100, 1)) == pytest.approx(100 * 101 / 2)
    # a second chunk of 100 tokens after 400 cached: 100 * 400 cross pairs plus the causal triangle
    assert attended_pairs(StepShape(100, 0, 500, 1)) == pytest.approx(100 * 400 + 100 * 101 / 2)


def test_empty_step_costs_nothing(llama3_8b):
    assert RooflineModel(llama3_8b, CATALOG["h100"]).step_time(StepShape(0, 0, 0)) == 0.0


def test_unknown_prefill_seqs_count_as_one(llama3_8b):
    model = RooflineModel(llama3_8b, CATALOG["h100"])
    assert model.step_time(StepShape(256, 0, 256)) == model.step_time(StepShape(256, 0, 256, 1))


def test_seventy_b_does_not_fit_an_l4(llama3_70b):
    model = RooflineModel(llama3_70b, get_hardware("l4"))
    weight_gib = llama3_70b.num_parameters * 2 / 2**30
    with pytest.raises(ValueError) as error:
        model.kv_capacity_tokens()
    message = str(error.value)
    assert "l4" in message
    assert f"{weight_gib:.1f} GiB" in message
    assert f"{24 * 0.9:.1f} GiB" in message


def test_kv_capacity_of_llama3_8b_on_h100(llama3_8b):
    h100 = CATALOG["h100"]
    model = RooflineModel(llama3_8b, h100)
    weight_bytes = llama3_8b.num_parameters * 2
    reserve = default_activation_reserve_bytes(llama3_8b, 2)
    kv_per_token = 2 * 32 * 8 * 128 * 2
    expected = int((h100.memory_bytes * 0.9 - weight_bytes - reserve) // kv_per_token)
    assert model.kv_capacity_tokens() == expected
    # ~128 KiB a token in ~55 GB free: several hundred thousand tokens, as vLLM reports on an H100.
    assert 300_000 < expected < 500_000


def test_explicit_activation_reserve_and_utilization_are_used(llama3_8b):
    h100 = CATALOG["h100"]
    model = RooflineModel(llama3_8b, h100, memory_utilization=0.5, activation_reserve_bytes=0)
    expected = int((h100.memory_bytes * 0.5 - llama3_8b.num_parameters * 2) // llama3_8b.kv_bytes_per_token(2))
    assert model.kv_capacity_tokens() == expected


def test_step_overhead_defaults_by_kind_and_can_be_overridden(llama3_8b):
    assert RooflineModel(llama3_8b, CATALOG["h100"]).step_overhead_s == DEFAULT_STEP_OVERHEAD_S["gpu"]
    assert RooflineModel(llama3_8b, CATALOG["cpu"]).step_overhead_s == DEFAULT_STEP_OVERHEAD_S["cpu"]
    assert DEFAULT_STEP_OVERHEAD_S["cpu"] > DEFAULT_STEP_OVERHEAD_S["gpu"]
    fast = RooflineModel(llama3_8b, CATALOG["h100"], step_overhead_s=0.0)
    slow = RooflineModel(llama3_8b, CATALOG["h100"], step_overhead_s=0.01)
    shape = StepShape(0, 1, 10)
    assert slow.step_time(shape) - fast.step_time(shape) == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"compute_efficiency": 0}, "compute_efficiency"),
    ({"bandwidth_efficiency": 1.5}, "bandwidth_efficiency"),
    ({"memory_utilization": -0.1}, "memory_utilization"),
    ({"dtype_bytes": 0}, "dtype_bytes"),
    ({"step_overhead_s": -1.0}, "step_overhead_s"),
])
def test_rejects_bad_parameters(llama3_8b, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        RooflineModel(llama3_8b, CATALOG["h100"], **kwargs)


@pytest.mark.parametrize("args, fragment", [
    ((-1, 0, 0), "prefill_tokens"),
    ((0, 1.5, 2), "decode_seqs"),
    ((10, 0, 10, 11), "prefill sequences"),
    ((100, 4, 50), "context_tokens=50"),
])
def test_step_shape_rejects_bad_values(args, fragment):
    with pytest.raises(ValueError, match=fragment):
        StepShape(*args)


def test_step_time_is_the_estimate_total_to_the_last_bit(llama3_8b):
    import random

    from fleetserve.perf.step_shape import mixed_shape
    rng = random.Random(4)
    for hardware in ("h100", "l4", "cpu"):
        model = RooflineModel(llama3_8b, CATALOG[hardware])
        for _ in range(2000):
            prefill = rng.choice([0, 1, rng.randint(2, 4000)])
            decodes = rng.randint(0 if prefill else 1, 256)
            shapes = [StepShape(prefill, decodes, prefill + decodes + rng.randint(0, 50_000),
                                rng.randint(0, min(prefill, 8))),
                      mixed_shape(rng.randint(1, 512), rng.randint(0, 5000), decodes, decodes * rng.randint(1, 3000))]
            for shape in shapes:
                assert model.step_time(shape) == model.estimate(shape).total_s
    assert model.step_time(StepShape(0, 0, 0)) == 0.0
