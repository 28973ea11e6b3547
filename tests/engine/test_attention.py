"""The compiled CPU decode kernel against the plain torch paged attention, on random caches."""
from __future__ import annotations

import pytest
import torch

from fleetserve.kernels import cpu as cpu_kernels
from fleetserve.model.attention import AttentionMetadata, paged_attention
from fleetserve.model.loader import cache_root


@pytest.fixture(scope="module")
def kernel():
    library = cpu_kernels.load(cache_root())
    if library is None:
        pytest.skip("no C compiler here: the engine falls back to the torch attention path")
    return library


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_torch_attention(kernel, cache_dtype):
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, head_dim, block_size, num_blocks = 9, 3, 64, 16, 40
    cache = torch.randn(2, kv_heads, num_blocks, block_size, head_dim, generator=generator).to(cache_dtype)
    seq_lens = [1, 17, 100, 64]
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, used = [], 0
    for length in seq_lens:
        need = -(-length // block_size)
        tables.append(order[used:used + need] + [0] * (7 - need))
        used += need
    q = torch.randn(len(seq_lens), heads, head_dim, generator=generator)
    tables_t, lens_t = torch.tensor(tables), torch.tensor(seq_lens)
    mask = (torch.arange(7 * block_size).unsqueeze(0) < lens_t.unsqueeze(1)).unsqueeze(1)
    reference = paged_attention(q, cache, AttentionMetadata(torch.empty(0, dtype=torch.long), len(seq_lens), tables_t,
                                                            mask, lens_t), head_dim ** -0.5)
    fast = paged_attention(q, cache, AttentionMetadata(torch.empty(0, dtype=torch.long), len(seq_lens), tables_t,
                                                       None, lens_t, kernel), head_dim ** -0.5)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_kernel_does_not_change_floating_point_mode(kernel):
    assert 5e-324 * 1.0 != 0.0  # flush-to-zero would leak into the whole process (hypothesis relies on it)


def test_a_cache_dtype_the_kernel_cannot_read_takes_the_torch_path(kernel):
    generator = torch.Generator().manual_seed(1)
    cache = torch.randn(2, 3, 8, 16, 64, generator=generator).half()
    q = torch.randn(2, 9, 64, generator=generator)
    tables, lens = torch.tensor([[0, 1], [2, 3]]), torch.tensor([20, 31])
    mask = (torch.arange(32).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(1)
    reference = paged_attention(q, cache, AttentionMetadata(torch.empty(0, dtype=torch.long), 2, tables, mask, lens),
                                64 ** -0.5)
    with_kernel = paged_attention(q, cache, AttentionMetadata(torch.empty(0, dtype=torch.long), 2, tables, mask, lens,
                                                              kernel), 64 ** -0.5)
    torch.testing.assert_close(with_kernel, reference)
