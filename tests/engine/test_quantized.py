"""Matrix products straight from GGUF blocks: the dequantized values are bit-identical to the gguf
package's, products match the dense ones, and the engine gives the same greedy tokens either way."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize, quantize

from fleetserve.engine.config import EngineConfig
from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.kernels import cpu as cpu_kernels
from fleetserve.model.gguf_blocks import QuantizedWeight, read_blocks
from fleetserve.model.loader import cache_root
from fleetserve.model.quantized import QuantizedMatmul

KINDS = [GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0]


@pytest.fixture(scope="module")
def library():
    library = cpu_kernels.load_quantized(cache_root())
    if library is None:
        pytest.skip("no C compiler here: the engine loads dense weights instead")
    return library


def random_weight(kind: GGMLQuantizationType, rows: int, inputs: int,
                  seed: int) -> tuple[QuantizedWeight, torch.Tensor]:
    values = np.random.default_rng(seed).standard_normal((rows, inputs)).astype(np.float32)
    blocks = quantize(values, kind)
    dense = torch.from_numpy(dequantize(blocks, kind).reshape(rows, inputs).astype(np.float32))
    return QuantizedWeight(int(kind), torch.from_numpy(np.ascontiguousarray(blocks)), inputs), dense


@pytest.mark.parametrize("kind", KINDS)
def test_dequantized_values_are_bit_identical_to_the_gguf_package(library, kind):
    weight, dense = random_weight(kind, 37, 96, seed=1)
    out = torch.empty(37, 96)
    assert library.dequantize_rows(weight.kind, weight.blocks.data_ptr(), 96, None, 37, out.data_ptr()) == 0
    assert torch.equal(out, dense)
    rows = torch.tensor([5, 0, 36, 5])
    assert torch.equal(QuantizedMatmul(library).embedding(rows, weight), dense[rows])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 9, 16, 23, 100])
def test_products_match_the_dense_matmul(library, kind, rows):
    weight, dense = random_weight(kind, 50, 128, seed=rows)  # 50 outputs: not a multiple of any tile
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
    bias = torch.randn(50)
    expected = x @ dense.t() + bias
    for matmul in (QuantizedMatmul(library), QuantizedMatmul(library, dense_from_rows=1)):
        assert torch.allclose(matmul(x, weight, bias), expected, rtol=1e-5, atol=1e-4)


def test_the_default_model_keeps_its_blocks(llm):
    blocks = read_blocks(llm.engine.model_path)
    layers = llm.engine.model_config.num_hidden_layers
    assert len(blocks) == 7 * layers + 1  # q k v o gate up down per layer, and the tied embedding
    assert {w.kind for w in blocks.values()} == {int(GGMLQuantizationType.Q4_1), int(GGMLQuantizationType.Q8_0)}
    assert llm.engine.weight_format == "gguf"


@pytest.mark.slow
def test_dense_and_gguf_weights_give_the_same_greedy_tokens(llm, chat_prompts):
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    # The session engine's settings (fp32 KV cache), so the weight format is the only difference.
    dense = LLM(dtype="float32", kv_cache_dtype="float32", weight_format="dense", kv_cache_memory="256MiB",
                max_num_seqs=16, max_num_batched_tokens=256)
    assert dense.engine.weight_format == "dense"
    expected = [r.token_ids for r in dense.generate(chat_prompts, params)]
    assert [r.token_ids for r in llm.generate(chat_prompts, params)] == expected


def test_gguf_weights_refused_where_they_cannot_be_used():
    with pytest.raises(ValueError, match="weight_format must be auto, gguf or dense, got 'q4'"):
        EngineConfig(weight_format="q4")
    with pytest.raises(ValueError, match="weight_format='gguf' cannot be used: .*float32.*pass weight_format='dense'"):
        LLM(dtype="bfloat16", weight_format="gguf")


def test_profile_features_follow_the_kernel_paths(library):
    from fleetserve.model.quantized import DENSE_FROM_ROWS
    from fleetserve.perf.profiled import KERNEL_DENSE_FROM_ROWS, KERNEL_FUSED_MAX_ROWS
    assert library.fused_max_rows() == KERNEL_FUSED_MAX_ROWS
    assert DENSE_FROM_ROWS == KERNEL_DENSE_FROM_ROWS


def test_a_row_gives_the_same_result_whatever_the_other_rows_of_its_kernel(library):
    """Rows up to the fused kernel's limit, and from there up to the dense path, each keep their arithmetic:
    a sequence's logits do not depend on how many rows share its step (speculative verification relies on
    it), and same_kernel_rows names how far a step may grow without changing kernel."""
    matmul = QuantizedMatmul(library)
    for kind in KINDS:
        weight, _ = random_weight(kind, 40, 96, seed=3)
        x = torch.randn(12, 96, generator=torch.Generator().manual_seed(4))
        alone = matmul(x[:1], weight)
        for rows in (2, 5, 8):
            assert torch.equal(matmul(x[:rows], weight)[:1], alone)
        assert torch.equal(matmul(x[:12], weight)[:1], matmul(x[:9], weight)[:1])
    fused = library.fused_max_rows()
    assert [matmul.same_kernel_rows(r) for r in (1, fused, fused + 1, 191, 192)] == [fused, fused, 191, 191, 192]
