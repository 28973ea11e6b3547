"""A model's architecture read from a GGUF file's metadata, without converting the file.

The simulator and the planner need only the architecture, so they read it here and never load torch or
transformers, which converting the file would. The fields are those the converted model's config.json
carries (llama.cpp's key names, `{architecture}.` prefixed); a test holds the two equal for the default
model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetserve.model.config import SUPPORTED_ARCHITECTURES, ModelConfig

GGUF_ARCHITECTURES = {family: name for name, family in reversed(SUPPORTED_ARCHITECTURES.items())}


def model_config_from_gguf(path: str | Path) -> ModelConfig:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    family = value("general.architecture")
    if family not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {family!r} is not supported; fleetserve runs "
                         f"{sorted(GGUF_ARCHITECTURES)}")
    hidden = value(f"{family}.embedding_length")
    heads = value(f"{family}.attention.head_count")
    tensor_names = {tensor.name for tensor in reader.tensors}
    scaling_type = value(f"{family}.rope.scaling.type")
    rope_scaling = None
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": value(f"{family}.rope.scaling.factor"),
                        "original_max_position_embeddings":
                            value(f"{family}.rope.scaling.original_context_length")}
    eos = value("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[family],
        vocab_size=value(f"{family}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=hidden,
        intermediate_size=value(f"{family}.feed_forward_length"),
        num_hidden_layers=value(f"{family}.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=value(f"{family}.attention.head_count_kv") or heads,
        head_dim=value(f"{family}.attention.key_length") or hidden // heads,
        rms_norm_eps=value(f"{family}.attention.layer_norm_rms_epsilon", 1e-6),
        rope_theta=float(value(f"{family}.rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=value(f"{family}.context_length", 2048),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm=family == "qwen3",
        bos_token_id=value("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[] if eos is None else [eos],
    )
