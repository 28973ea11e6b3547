"""Every performance model answers all of PerfModel, and the roofline prices a run of decodes as its steps."""
import importlib
import inspect
import pkgutil
import random

import pytest

import fleetserve.perf
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import CATALOG
from fleetserve.perf.model import PerfModel, StepShape, decode_run_shapes
from fleetserve.perf.profiled import ProfiledModel
from fleetserve.perf.roofline import RooflineModel, attended_pairs
from fleetserve.perf.step_shape import mixed_shape

LLAMA_3_8B = ModelConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, intermediate_size=14336, vocab_size=128256)
METHODS = sorted(name for name, value in vars(PerfModel).items() if not name.startswith("_") and callable(value))


def perf_model_classes() -> set[type]:
    """Classes in fleetserve.perf that implement any part of PerfModel."""
    found = set()
    for module_info in pkgutil.iter_modules(fleetserve.perf.__path__):
        module = importlib.import_module(f"fleetserve.perf.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and cls is not PerfModel and any(hasattr(cls, m) for m in METHODS):
                found.add(cls)
    return found


def models() -> list[PerfModel]:
    return [RooflineModel(LLAMA_3_8B, CATALOG["h100"]), RooflineModel(LLAMA_3_8B, CATALOG["l4"]),
            ProfiledModel({"const": 0.02, "batched": 0.01, "decode_seqs": 1e-3, "decode_context": 2e-6,
                           "prefill_pairs": 1e-8}, 1000, "cpu")]


def test_the_interface_is_what_the_simulator_calls():
    assert METHODS == ["decode_step_durations", "kv_capacity_tokens", "step_time"]
    assert set(PerfModel.__annotations__) == {"name"}


def test_every_model_in_perf_is_checked_here():
    assert perf_model_classes() == {type(model) for model in models()}


@pytest.mark.parametrize("model", models(), ids=lambda model: model.name)
def test_every_model_implements_the_whole_interface_itself(model):
    assert isinstance(model, PerfModel) and isinstance(model.name, str) and model.name
    for method in METHODS:
        assert getattr(type(model), method) is not getattr(PerfModel, method), f"{model.name} lacks {method}"
    assert model.kv_capacity_tokens() > 0
    assert model.step_time(StepShape(0, 0, 0)) == 0.0
    shapes = list(decode_run_shapes(7, 7 * 300, 40))
    assert model.decode_step_durations(7, 7 * 300, 40) == [model.step_time(shape) for shape in shapes]
    assert model.decode_step_durations(7, 7 * 300, 0) == []


@pytest.mark.parametrize("hardware", ["h100", "l4", "cpu"])
def test_roofline_run_pricing_equals_its_estimate_step_by_step(hardware):
    model = RooflineModel(LLAMA_3_8B, CATALOG[hardware])
    for seqs in (1, 3, 64, 256):
        run = model.decode_step_durations(seqs, seqs * 100 + 1, 30)
        assert run == [model.estimate(shape).total_s for shape in decode_run_shapes(seqs, seqs * 100 + 1, 30)]


def test_roofline_is_flops_or_bytes_plus_overhead_to_the_last_bit():
    """The formula spelled out: FLOPs of the linear layers, the LM head per sampled sequence and the attended
    pairs; bytes of the weights and the KV read and written; the slower of the two plus the overhead."""
    rng = random.Random(7)
    for hardware in ("h100", "l4", "cpu"):
        model = RooflineModel(LLAMA_3_8B, CATALOG[hardware])
        hw = model.hardware
        for _ in range(500):
            prefill = rng.choice([0, 1, rng.randint(2, 4000)])
            decodes = rng.randint(0 if prefill else 1, 256)
            for shape in (StepShape(prefill, decodes, prefill + decodes + rng.randint(0, 50_000),
                                    rng.randint(0, min(prefill, 8))),
                          mixed_shape(rng.randint(1, 512), rng.randint(0, 5000), decodes,
                                      decodes * rng.randint(1, 3000))):
                new = shape.prefill_tokens + shape.decode_seqs
                flops = (2 * model.body_params * new + 2 * model.lm_head_params * (shape.decode_seqs
                                                                                   + shape.num_prefill_seqs)
                         + model.attention_flops_per_pair * attended_pairs(shape))
                bytes_moved = model.weight_bytes_read_per_step + model.kv_bytes_per_token * (shape.context_tokens
                                                                                             + new)
                compute_s = flops / (hw.peak_bf16_flops * model.compute_efficiency)
                memory_s = bytes_moved / (hw.memory_bandwidth_bytes_s * model.bandwidth_efficiency)
                estimate = model.estimate(shape)
                assert (estimate.flops, estimate.bytes_moved) == (flops, bytes_moved)
                assert (estimate.compute_s, estimate.memory_s) == (compute_s, memory_s)
                assert model.step_time(shape) == estimate.total_s == max(compute_s, memory_s) + model.step_overhead_s
