"""The engine layer's one configuration."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from fleetserve.engine.scheduling_policy import SchedulingPolicy
from fleetserve.engine.step_budget import check_max_step_ms
from fleetserve.speculative.config import SpeculativeConfig

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 1024, "M": 1e6, "MB": 1e6, "MIB": 1024**2,
          "G": 1e9, "GB": 1e9, "GIB": 1024**3, "T": 1e12, "TB": 1e12, "TIB": 1024**4}


def parse_size(value: int | str) -> int:
    """'512MiB', '2GB', '1.5G' or a byte count -> bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    unit = (match.group(2) or "").upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"cannot read the size {value!r}; write it like 512MiB, 2GiB or 1000000")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class EngineConfig:
    model: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    weight_format: str = "auto"  # auto | gguf (multiply from GGUF blocks) | dense
    kv_cache_memory: int | str = "1GiB"
    block_size: int = 16
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    # Milliseconds a step may take, as the engine's fit of its own step times predicts: prompts go in chunks
    # small enough that every decoding stream's next token comes within it. None: no time bound.
    max_step_ms: float | None = None
    max_model_len: int | None = None
    max_queue: int = 1024  # waiting requests beyond which the async engine refuses new ones (HTTP 429)
    enable_prefix_caching: bool = True
    record_kv_events: bool = False
    # Disaggregated prefill: how long, and up to how many bytes, prompt KV waits here for decode replicas.
    kv_export_ttl_s: float = 60.0
    kv_export_max_bytes: int = 1 << 30
    num_threads: int | None = None  # None: auto, one per core other processes leave free (engine/thread_policy.py)
    seed: int = 0
    scheduling: SchedulingPolicy = field(default_factory=SchedulingPolicy)  # priorities and service classes
    # Model-free speculative decoding (vLLM's --speculative-config): a SpeculativeConfig, or its dict or JSON.
    speculative_config: SpeculativeConfig | dict | str | None = None

    def __post_init__(self) -> None:
        self.kv_cache_bytes = parse_size(self.kv_cache_memory)
        self.speculative = SpeculativeConfig.parse(self.speculative_config)
        check_max_step_ms(self.max_step_ms)
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, or None to adapt to the free cores, got {self.num_threads}")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_cache_dtype not in ("auto", "bfloat16", "bf16", "float32", "fp32", "float16", "fp16"):
            raise ValueError(f"kv_cache_dtype must be auto, bfloat16, float16 or float32, got {self.kv_cache_dtype!r}")
        if self.weight_format not in ("auto", "gguf", "dense"):
            raise ValueError(f"weight_format must be auto, gguf or dense, got {self.weight_format!r}")
        if self.dtype not in ("auto", "bfloat16", "bf16", "float32", "fp32", "float16", "fp16"):
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
