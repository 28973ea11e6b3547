"""Attention over a paged KV cache, in plain torch (correct on any device; CUDA kernels can replace it).

Per layer the cache is one tensor of shape [2, kv_heads, num_blocks, block_size, head_dim]. Gathering a
block table along dim 2 leaves every (kv head, sequence) slab contiguous, which is what batched matmuls
want. Decodes (one query token each) run as one batch; prefill chunks run one sequence at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from fleetserve.kernels import cpu as cpu_kernels

_KERNEL_CACHE_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class PrefillChunk:
    token_start: int
    token_end: int
    context_start: int  # tokens of this sequence already in the cache before this chunk
    block_table: torch.Tensor


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor
    num_decodes: int = 0
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks]
    decode_mask: torch.Tensor | None = None  # [num_decodes, 1, max_blocks * block_size], True = attend
    decode_seq_lens: torch.Tensor | None = None
    decode_kernel: Any = None  # the compiled CPU kernel library, when available
    prefills: list[PrefillChunk] = field(default_factory=list)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store this step's keys and values ([tokens, kv_heads, head_dim]) at their slots."""
    flat = kv_cache.view(2, kv_cache.shape[1], -1, kv_cache.shape[-1])
    flat[0].index_copy_(1, slot_mapping, k.transpose(0, 1).to(kv_cache.dtype))
    flat[1].index_copy_(1, slot_mapping, v.transpose(0, 1).to(kv_cache.dtype))


def paged_attention(q: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [tokens, heads, head_dim] (decode tokens first) -> [tokens, heads, head_dim]."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = kv_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    nd = meta.num_decodes
    # The C kernel reads fp32 or bf16 caches; any other cache dtype takes the torch path below.
    if nd and meta.decode_kernel is not None and q.dtype == torch.float32 and kv_cache.dtype in _KERNEL_CACHE_DTYPES:
        out[:nd] = cpu_kernels.paged_decode_attention(meta.decode_kernel, q[:nd].contiguous(), kv_cache,
                                                      meta.decode_block_tables, meta.decode_seq_lens, scale)
    elif nd:
        tables = meta.decode_block_tables
        gathered = kv_cache.index_select(2, tables.reshape(-1))
        gathered = gathered.view(2, num_kv_heads, nd, -1, head_dim).to(q.dtype)
        # The query heads of one group act as query rows over the same keys: no causal mask is needed.
        qd = q[:nd].view(nd, num_kv_heads, group, head_dim).transpose(0, 1)
        attn = F.scaled_dot_product_attention(qd, gathered[0], gathered[1], attn_mask=meta.decode_mask, scale=scale)
        out[:nd] = attn.transpose(0, 1).reshape(nd, num_heads, head_dim)
    for chunk in meta.prefills:
        n = chunk.token_end - chunk.token_start
        total = chunk.context_start + n
        gathered = kv_cache.index_select(2, chunk.block_table).view(2, num_kv_heads, -1, head_dim)
        # 4-D inputs with the kv heads repeated take torch's fused CPU kernel, several times faster here.
        k = gathered[0, :, :total].to(q.dtype).repeat_interleave(group, 0).unsqueeze(0)
        v = gathered[1, :, :total].to(q.dtype).repeat_interleave(group, 0).unsqueeze(0)
        qp = q[chunk.token_start:chunk.token_end].transpose(0, 1).unsqueeze(0)
        if chunk.context_start == 0:
            attn = F.scaled_dot_product_attention(qp, k, v, is_causal=True, scale=scale)
        else:
            rows = torch.arange(n, device=q.device).unsqueeze(1) + chunk.context_start
            mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows
            attn = F.scaled_dot_product_attention(qp, k, v, attn_mask=mask, scale=scale)
        out[chunk.token_start:chunk.token_end] = attn[0].transpose(0, 1)
    return out
