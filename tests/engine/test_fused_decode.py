"""The one-call decode layers (fleetserve/kernels/decode_layers_cpu.c) against the plain torch model: random
small models in every block format and layer variant, ragged batches across block boundaries of the
paged cache, and the default model's greedy tokens at several batch sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize, quantize

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.kernels import cpu as cpu_kernels
from fleetserve.model.attention import AttentionMetadata
from fleetserve.model.config import ModelConfig
from fleetserve.model.gguf_blocks import QuantizedWeight
from fleetserve.model.llama import LlamaModel
from fleetserve.model.loader import cache_root
from fleetserve.model.quantized import QuantizedMatmul

BLOCK_SIZE, NUM_BLOCKS = 16, 24


@pytest.fixture(scope="module")
def libraries():
    quantized, decode = cpu_kernels.load_quantized(cache_root()), cpu_kernels.load_decode_layers(cache_root())
    if quantized is None or decode is None:
        pytest.skip("no C compiler here: the engine runs the torch path")
    return quantized, decode


def tiny_models(libraries, kind: GGMLQuantizationType, qk_norm: bool, bias: bool, seed: int):
    """The same random weights twice: in GGUF blocks with the one-call decode, and dequantized for torch."""
    config = ModelConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         attention_bias=bias, qk_norm=qk_norm)
    rng = np.random.default_rng(seed)
    def norm(size: int) -> torch.Tensor:
        return torch.from_numpy(rng.uniform(0.5, 1.5, size).astype(np.float32))

    dense = {"model.embed_tokens.weight": torch.from_numpy(rng.standard_normal((50, 64), np.float32)),
             "model.norm.weight": norm(64)}
    blocks: dict[str, QuantizedWeight] = {}
    shapes = {"self_attn.q_proj": (128, 64), "self_attn.k_proj": (64, 64), "self_attn.v_proj": (64, 64),
              "self_attn.o_proj": (64, 128), "mlp.gate_proj": (96, 64), "mlp.up_proj": (96, 64),
              "mlp.down_proj": (64, 96)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        for name, (rows, inputs) in shapes.items():
            values = (rng.standard_normal((rows, inputs)) / np.sqrt(inputs)).astype(np.float32)
            packed = quantize(values, kind)
            blocks[p + name + ".weight"] = QuantizedWeight(int(kind), torch.from_numpy(np.ascontiguousarray(packed)),
                                                           inputs)
            dense[p + name + ".weight"] = torch.from_numpy(dequantize(packed, kind).reshape(rows, inputs).copy())
        for name in ("input_layernorm", "post_attention_layernorm"):
            dense[p + name + ".weight"] = norm(64)
        if bias:
            for n, size in (("q", 128), ("k", 64), ("v", 64)):
                dense[p + f"self_attn.{n}_proj.bias"] = torch.from_numpy(rng.standard_normal(size).astype(np.float32))
        if qk_norm:
            for n in ("q_norm", "k_norm"):
                dense[p + f"self_attn.{n}.weight"] = norm(32)
    fused = LlamaModel(config, torch.float32, torch.device("cpu"))
    fused.load_weights(dense, blocks, QuantizedMatmul(libraries[0]), libraries[1])
    reference = LlamaModel(config, torch.float32, torch.device("cpu"))
    reference.load_weights(dense)
    return fused, reference


def decode_batch(seq_lens: list[int], seed: int):
    """Block tables over shuffled blocks; each sequence's new token is its last position."""
    order = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(seed)).tolist()
    width = max(-(-n // BLOCK_SIZE) for n in seq_lens)
    tables, used, slots = [], 0, []
    for length in seq_lens:
        need = -(-length // BLOCK_SIZE)
        table = order[used:used + need]
        used += need
        slots.append(table[(length - 1) // BLOCK_SIZE] * BLOCK_SIZE + (length - 1) % BLOCK_SIZE)
        tables.append(table + [0] * (width - need))
    lens = torch.tensor(seq_lens)
    mask = (torch.arange(width * BLOCK_SIZE).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(1)
    meta = AttentionMetadata(torch.tensor(slots), len(seq_lens), torch.tensor(tables), mask, lens)
    return meta, lens - 1


@pytest.mark.parametrize("kind", [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["llama", "qwen2 bias", "qwen3 qk-norm"])
def test_one_call_layers_match_the_torch_model(libraries, kind, cache_dtype, variant):
    fused, reference = tiny_models(libraries, kind, qk_norm="qk-norm" in variant, bias="bias" in variant, seed=3)
    assert fused.fused_decode is not None and reference.fused_decode is None
    # Ragged lengths on both sides of the 16-token block boundaries, one sequence a single token long.
    seq_lens = [1, 15, 16, 17, 32, 33, 70, 9]
    meta, positions = decode_batch(seq_lens, seed=4)
    generator = torch.Generator().manual_seed(5)
    caches = [torch.randn(2, 2, NUM_BLOCKS, BLOCK_SIZE, 32, generator=generator).to(cache_dtype) for _ in range(2)]
    ids = torch.randint(0, 50, (len(seq_lens),), generator=generator)
    reference_caches = [cache.clone() for cache in caches]
    assert fused.fused_decode.applies(caches, meta)
    out = fused(ids, positions, caches, meta)
    expected = reference(ids, positions, reference_caches, meta)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.compute_logits(out), reference.compute_logits(expected), rtol=1e-4, atol=1e-4)
    for cache, reference_cache in zip(caches, reference_caches):
        tolerance = 1e-2 if cache_dtype == torch.bfloat16 else 1e-5  # one bf16 rounding step apart at most
        torch.testing.assert_close(cache.float(), reference_cache.float(), rtol=tolerance, atol=tolerance)


def test_steps_with_a_prompt_chunk_take_the_torch_path(libraries):
    fused, _ = tiny_models(libraries, GGMLQuantizationType.Q4_1, qk_norm=False, bias=False, seed=1)
    meta, _ = decode_batch([5], seed=1)
    from fleetserve.model.attention import PrefillChunk
    meta.prefills.append(PrefillChunk(1, 4, 0, torch.tensor([3])))
    caches = [torch.zeros(2, 2, NUM_BLOCKS, BLOCK_SIZE, 32) for _ in range(2)]
    assert not fused.fused_decode.applies(caches, meta)
    assert not fused.fused_decode.applies([cache.half() for cache in caches], decode_batch([5], seed=1)[0])


def greedy(llm, prompts: list[list[int]], fused: bool) -> list[list[int]]:
    model = llm.engine.model
    saved = model.fused_decode
    assert saved is not None, "the default model should take the one-call decode"
    model.fused_decode = saved if fused else None
    try:
        params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
        return [r.token_ids for r in llm.generate(prompts, params)]
    finally:
        model.fused_decode = saved


def ragged(chat_prompts: list[list[int]], batch: int) -> list[list[int]]:
    return [chat_prompts[i % len(chat_prompts)][: 12 + i] for i in range(batch)]


@pytest.mark.parametrize("batch", [1, 2, 8])
def test_default_model_greedy_tokens_unchanged(llm, chat_prompts, batch):
    prompts = ragged(chat_prompts, batch)
    assert greedy(llm, prompts, fused=True) == greedy(llm, prompts, fused=False)


@pytest.mark.slow
def test_default_model_greedy_tokens_unchanged_at_batch_32(chat_prompts):
    from fleetserve.engine.llm import LLM
    llm = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="256MiB", max_num_seqs=32,
              max_num_batched_tokens=1024)
    prompts = ragged(chat_prompts, 32)
    assert greedy(llm, prompts, fused=True) == greedy(llm, prompts, fused=False)


def test_a_failed_compile_leaves_the_kernels_unloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert cpu_kernels.load_decode_layers(tmp_path) is None
    assert not list(tmp_path.glob("kernels/*.so"))


def test_without_c_kernels_the_engine_runs_the_torch_path(monkeypatch, llm, chat_prompts):
    from fleetserve.engine.llm import LLM
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    monkeypatch.setenv("FLEETSERVE_NO_C_KERNELS", "1")
    plain = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="64MiB", max_num_seqs=4)
    assert plain.engine.weight_format == "dense"
    assert plain.engine.model.fused_decode is None and plain.engine.runner.decode_kernel is None
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = chat_prompts[:2]
    assert ([r.token_ids for r in plain.generate(prompts, params)]
            == [r.token_ids for r in llm.generate(prompts, params)])
