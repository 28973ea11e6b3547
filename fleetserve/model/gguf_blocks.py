"""GGUF weight blocks kept as they are: written next to the dequantized checkpoint at conversion, read back
by the engine, which multiplies with them directly (fleetserve.model.quantized).

Each stored tensor is one weight matrix under its Hugging Face name, as uint8 [out_features, row_bytes],
rows in the Hugging Face order (llama.cpp permutes the q and k rows for its rotary layout; transformers
undoes that on load, and so do we, checked against the dequantized tensors)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

BLOCKS_FILE = "gguf-blocks/blocks.safetensors"
QK = 32
BLOCK_BYTES = {2: 18, 3: 20, 8: 34}  # ggml type id -> bytes per 32 weights: Q4_0, Q4_1, Q8_0
TYPE_NAMES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}

_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


@dataclass
class QuantizedWeight:
    kind: int  # ggml type id
    blocks: torch.Tensor  # uint8 [out_features, in_features / 32 * BLOCK_BYTES[kind]], contiguous
    in_features: int

    @property
    def out_features(self) -> int:
        return self.blocks.shape[0]

    @classmethod
    def concat(cls, parts: list[QuantizedWeight]) -> QuantizedWeight | None:
        """Rows of several matrices as one (fused q|k|v, gate|up); None if their formats differ."""
        if len({(p.kind, p.in_features) for p in parts}) != 1:
            return None
        return cls(parts[0].kind, torch.cat([p.blocks for p in parts]).contiguous(), parts[0].in_features)


def hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    match = _LAYER.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"
    return None


def _rotary_row_order(rows: int, heads: int) -> np.ndarray:
    """Row i of the Hugging Face matrix is row order[i] of llama.cpp's."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(rows)


def _first_block_values(kind: int, blocks: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType, dequantize
    return dequantize(blocks[:, :BLOCK_BYTES[kind]], GGMLQuantizationType(kind)).reshape(len(blocks), QK)


def write_blocks(gguf_path: Path, folder: Path, dense: Mapping[str, torch.Tensor], heads: int,
                 kv_heads: int) -> int:
    """Store every supported quantized matrix whose values match the dense checkpoint; returns how many."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file
    reader = GGUFReader(str(gguf_path))
    tensors: dict[str, np.ndarray] = {}
    kinds: dict[str, int] = {}
    for tensor in reader.tensors:
        kind, name = int(tensor.tensor_type), hf_name(tensor.name)
        if kind not in BLOCK_BYTES or name is None:
            continue
        reference = dense.get(name)
        if reference is None and name == "lm_head.weight":
            reference = dense.get("model.embed_tokens.weight")
        if reference is None or reference.dim() != 2 or reference.shape[1] % QK:
            continue
        blocks = np.asarray(tensor.data).view(np.uint8).reshape(reference.shape[0], -1)
        expected = reference[:, :QK].float().numpy()
        candidates = [blocks]
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            candidates.append(blocks[_rotary_row_order(len(blocks), heads if "q_proj" in name else kv_heads)])
        for candidate in candidates:
            if candidate.shape[1] == reference.shape[1] // QK * BLOCK_BYTES[kind] and np.array_equal(
                    _first_block_values(kind, candidate), expected):
                tensors[name], kinds[name] = np.ascontiguousarray(candidate), kind
                break
    if tensors:
        (folder / BLOCKS_FILE).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / BLOCKS_FILE), metadata={"kinds": json.dumps(kinds)})
    return len(tensors)


def read_blocks(folder: Path) -> dict[str, QuantizedWeight]:
    """The stored matrices of a converted model, or {} when it has none."""
    path = folder / BLOCKS_FILE
    if not path.exists():
        return {}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        kinds = json.loads(handle.metadata()["kinds"])
        weights = {}
        for name in handle.keys():
            blocks = handle.get_tensor(name).clone()  # a copy: a view would pin the whole mapped file
            kind = kinds[name]
            weights[name] = QuantizedWeight(kind, blocks, blocks.shape[1] // BLOCK_BYTES[kind] * QK)
    return weights
