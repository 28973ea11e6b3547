"""fleetserve: an LLM serving framework (engine, service layer, simulator)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `fleetserve --help` and the light modules do not pay for importing torch.
    if name == "LLM":
        from fleetserve.engine.llm import LLM
        return LLM
    if name == "SamplingParams":
        from fleetserve.engine.sampling_params import SamplingParams
        return SamplingParams
    raise AttributeError(f"module 'fleetserve' has no attribute {name!r}")
