"""A decode step's transformer layers in one C call (fleetserve/kernels/decode_layers_cpu.c).

A step of single-token decodes spends most of its time between operations, not in them: some 25 torch
operations per layer, each dispatched from Python. One call per step removes that; the layer's
arithmetic is the same as LlamaModel's (weights stay in their GGUF blocks, keys and values are read in
place from the paged cache). It applies where every layer matrix is in blocks and the cache is fp32 or
bf16; anything else takes the torch path."""
from __future__ import annotations

import ctypes

import torch

from fleetserve.model.attention import AttentionMetadata
from fleetserve.model.config import ModelConfig
from fleetserve.model.gguf_blocks import QuantizedWeight

LAYER_MATRICES = ("qkv", "o", "gate_up", "down")
LAYER_VECTORS = ("input_norm", "post_norm", "qkv_bias", "q_norm", "k_norm")
_KV_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


class DecodeShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate",
                                                  "block_size", "kv_is_bf16")] + [
        ("num_blocks", ctypes.c_int64), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
        ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p)]


class FusedDecode:
    def __init__(self, library: ctypes.CDLL, config: ModelConfig, weights: dict, cos: torch.Tensor,
                 sin: torch.Tensor) -> None:
        self.library, self.config = library, config
        self.cos, self.sin = cos.contiguous(), sin.contiguous()
        layers = [f"model.layers.{i}." for i in range(config.num_hidden_layers)]
        self.matrices = [[weights[p + name] for name in LAYER_MATRICES] for p in layers]
        self.vectors = [[weights.get(p + name) for name in LAYER_VECTORS] for p in layers]
        self.kinds = torch.tensor([[w.kind for w in row] for row in self.matrices], dtype=torch.int32)
        self._layout: tuple[DecodeShape, torch.Tensor] | None = None
        self._layout_for: tuple = ()

    @staticmethod
    def supports(weights: dict, config: ModelConfig) -> bool:
        return all(isinstance(weights.get(f"model.layers.{i}.{name}"), QuantizedWeight)
                   for i in range(config.num_hidden_layers) for name in LAYER_MATRICES)

    def applies(self, kv_caches: list[torch.Tensor], meta: AttentionMetadata) -> bool:
        return (not meta.prefills and meta.num_decodes > 0 and kv_caches[0].dtype in _KV_DTYPES
                and meta.decode_block_tables is not None and meta.decode_seq_lens is not None)

    def _layout_of(self, kv_caches: list[torch.Tensor]) -> tuple[DecodeShape, torch.Tensor]:
        """The shapes and the per-layer pointers, built again only when the caches change."""
        key = (kv_caches[0].dtype, *kv_caches[0].shape, *(cache.data_ptr() for cache in kv_caches))
        if self._layout is None or key != self._layout_for:
            c, cache = self.config, kv_caches[0]
            shape = DecodeShape(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                                c.head_dim, c.intermediate_size, cache.shape[3], _KV_DTYPES[cache.dtype],
                                cache.shape[2], c.rms_norm_eps, c.head_dim ** -0.5, self.cos.data_ptr(),
                                self.sin.data_ptr())
            rows = [[w.blocks.data_ptr() for w in matrices] + [0 if v is None else v.data_ptr() for v in vectors]
                    + [cache.data_ptr()] for matrices, vectors, cache in zip(self.matrices, self.vectors, kv_caches)]
            self._layout, self._layout_for = (shape, torch.tensor(rows, dtype=torch.int64)), key
        return self._layout

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, kv_caches: list[torch.Tensor],
                 meta: AttentionMetadata) -> torch.Tensor:
        """x: [decodes, hidden] fp32 embeddings, overwritten with the last layer's output (before the final
        norm), which is returned."""
        shape, pointers = self._layout_of(kv_caches)
        x = x.contiguous()
        positions, slots = positions.contiguous(), meta.slot_mapping.contiguous()
        tables = meta.decode_block_tables.contiguous()  # type: ignore[union-attr]
        seq_lens = meta.decode_seq_lens.contiguous()  # type: ignore[union-attr]
        status = self.library.decode_layers(ctypes.byref(shape), pointers.data_ptr(), self.kinds.data_ptr(),
                                            x.data_ptr(), x.shape[0], positions.data_ptr(), slots.data_ptr(),
                                            tables.data_ptr(), tables.shape[1], seq_lens.data_ptr())
        if status != 0:
            raise ValueError(f"the decode kernels cannot take these weight block types: {self.kinds.unique().tolist()}")
        return x
