"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2/2.5, Qwen3) over a paged KV cache.

Weights are held fused (q|k|v and gate|up) so each layer runs few, large matmuls. Numerics follow the
Hugging Face implementation (norms in fp32, rotary in the model dtype) so greedy outputs agree with it.
"""
from __future__ import annotations

import ctypes
import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fleetserve.model.attention import AttentionMetadata, paged_attention, write_kv
from fleetserve.model.config import ModelConfig
from fleetserve.model.fused_decode import FusedDecode
from fleetserve.model.gguf_blocks import QuantizedWeight
from fleetserve.model.quantized import QuantizedMatmul


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        original = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = original / low, original / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(is_medium, smoothed, scaled)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    return inv_freq


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.device = device
        self.scale = config.head_dim ** -0.5
        max_pos = config.max_position_embeddings
        positions = torch.arange(max_pos, dtype=torch.float32)
        freqs = torch.outer(positions, rope_inverse_frequencies(config))
        self.register_buffer("cos", freqs.cos().to(dtype=dtype, device=device), persistent=False)
        self.register_buffer("sin", freqs.sin().to(dtype=dtype, device=device), persistent=False)
        self.weights: dict[str, torch.Tensor | QuantizedWeight] = {}
        self.quantized_matmul: QuantizedMatmul | None = None
        self.fused_decode: FusedDecode | None = None

    def load_weights(self, tensors: Mapping[str, torch.Tensor], quantized: Mapping[str, QuantizedWeight] | None = None,
                     quantized_matmul: QuantizedMatmul | None = None, decode_layers: ctypes.CDLL | None = None) -> None:
        """Take Hugging Face-named tensors and keep them fused, in the run dtype, on the device. Matrices
        found in `quantized` (GGUF blocks) stay in their blocks when a `quantized_matmul` is given; with the
        `decode_layers` kernel library too, decode-only steps run every layer in one call."""
        c = self.config
        quantized = quantized if quantized_matmul is not None else {}
        self.quantized_matmul = quantized_matmul

        def transposed(tensor: torch.Tensor) -> torch.Tensor:
            # [in, out] storage: x @ w runs measurably faster than F.linear's x @ w.T on MKL for our shapes.
            return tensor.t().contiguous()

        def take(name: str) -> torch.Tensor:
            if name not in tensors:
                raise KeyError(f"the checkpoint has no tensor {name!r}")
            # A copy: a view would pin the whole memory-mapped checkpoint in the process.
            return tensors[name].to(dtype=self.dtype, device=self.device, copy=True).contiguous()

        def matrix(names: list[str]) -> torch.Tensor | QuantizedWeight:
            if all(name in quantized for name in names):
                fused = QuantizedWeight.concat([quantized[name] for name in names])
                if fused is not None:
                    return fused
            return transposed(torch.cat([take(name) for name in names]))

        embed_name, head_name = "model.embed_tokens.weight", "lm_head.weight"
        w = {"embed": quantized.get(embed_name) or take(embed_name), "norm": take("model.norm.weight")}
        if c.tie_word_embeddings or (head_name not in tensors and head_name not in quantized):
            w["lm_head"] = w["embed"]
        else:
            w["lm_head"] = quantized.get(head_name) or take(head_name)
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            w[p + "qkv"] = matrix([p + f"self_attn.{n}_proj.weight" for n in "qkv"])
            if c.attention_bias:
                w[p + "qkv_bias"] = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
            if c.qk_norm:
                w[p + "q_norm"] = take(p + "self_attn.q_norm.weight")
                w[p + "k_norm"] = take(p + "self_attn.k_norm.weight")
            w[p + "o"] = matrix([p + "self_attn.o_proj.weight"])
            w[p + "gate_up"] = matrix([p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"])
            w[p + "down"] = matrix([p + "mlp.down_proj.weight"])
            w[p + "input_norm"] = take(p + "input_layernorm.weight")
            w[p + "post_norm"] = take(p + "post_attention_layernorm.weight")
        self.weights = w
        self.fused_decode = None
        if decode_layers is not None and self.dtype == torch.float32 and FusedDecode.supports(w, c):
            self.fused_decode = FusedDecode(decode_layers, c, w, self.cos, self.sin)

    def linear(self, x: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weights[name]
        if isinstance(weight, QuantizedWeight):
            return self.quantized_matmul(x, weight, bias)
        return x @ weight if bias is None else torch.addmm(bias, x, weight)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        c, w = self.config, self.weights
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q_size, kv_size = nh * hd, nkv * hd
        embed = w["embed"]
        x = (self.quantized_matmul.embedding(input_ids, embed) if isinstance(embed, QuantizedWeight)
             else F.embedding(input_ids, embed))
        if self.fused_decode is not None and self.fused_decode.applies(kv_caches, meta):
            return rms_norm(self.fused_decode(x, positions, kv_caches, meta), w["norm"], c.rms_norm_eps)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        t = x.shape[0]
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_norm"], c.rms_norm_eps)
            qkv = self.linear(h, p + "qkv", w.get(p + "qkv_bias"))
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q, k, v = q.view(t, nh, hd), k.view(t, nkv, hd), v.view(t, nkv, hd)
            if c.qk_norm:
                q = rms_norm(q, w[p + "q_norm"], c.rms_norm_eps)
                k = rms_norm(k, w[p + "k_norm"], c.rms_norm_eps)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
            write_kv(kv_caches[i], k, v, meta.slot_mapping)
            attn = paged_attention(q, kv_caches[i], meta, self.scale)
            x = x + self.linear(attn.view(t, q_size), p + "o")
            h = rms_norm(x, w[p + "post_norm"], c.rms_norm_eps)
            gate, up = self.linear(h, p + "gate_up").chunk(2, dim=-1)
            x = x + self.linear(F.silu(gate) * up, p + "down")
        return rms_norm(x, w["norm"], c.rms_norm_eps)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.weights["lm_head"]
        if isinstance(head, QuantizedWeight):
            # Never dequantized whole: the vocabulary matrix is the largest, and only sampled rows come here.
            return self.quantized_matmul(hidden.float(), head, allow_dense=False)
        return F.linear(hidden, head).float()
