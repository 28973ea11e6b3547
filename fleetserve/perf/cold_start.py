"""How long a new replica takes from the order to start until it serves: a fixed delay plus loading the weights.

    cold start = fixed_s + model bytes / min(storage read bandwidth, the hardware's load bandwidth)

The fixed delay stands for what does not grow with the model: a process or container starting (the study
"Serverless Cold Starts and Where to Find Them" measured up to 7 s per start on a production platform),
the runtime and device context, the engine's KV-cache allocation and warm-up. 15 s is an estimate of that
whole, not a measurement; pass your own (`fleetserve sim --cold-start`). The weights are read from storage
and cross the host link to the device; the slower of the two bounds the load. The storage default is one
PCIe 4.0 NVMe SSD's sequential read, about 7 GB/s (e.g. Samsung 990 PRO: 7,450 MB/s); the host link is
the catalog's `Hardware.load_bandwidth_bytes_s`. An 8B model in bf16 (16 GB) then loads in 2.3 s.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import Hardware

DEFAULT_FIXED_S = 15.0
DEFAULT_STORAGE_READ_BYTES_S = 7e9


@dataclass(frozen=True)
class ColdStart:
    fixed_s: float = DEFAULT_FIXED_S
    storage_read_bytes_s: float = DEFAULT_STORAGE_READ_BYTES_S

    def __post_init__(self) -> None:
        if not self.fixed_s >= 0:
            raise ValueError(f"the cold start's fixed delay must be >= 0 seconds, got {self.fixed_s}")
        if not self.storage_read_bytes_s > 0:
            raise ValueError(f"the storage read bandwidth must be positive bytes/s, got {self.storage_read_bytes_s}")

    def load_bandwidth(self, hardware: Hardware) -> float:
        return min(self.storage_read_bytes_s, hardware.load_bandwidth_bytes_s)

    def load_s(self, model_bytes: int, hardware: Hardware) -> float:
        """Seconds to bring `model_bytes` of weights onto one device of `hardware`."""
        if model_bytes < 0:
            raise ValueError(f"model_bytes must not be negative, got {model_bytes}")
        return model_bytes / self.load_bandwidth(hardware)

    def seconds(self, model_bytes: int, hardware: Hardware) -> float:
        """From the order to start until the replica serves."""
        return self.fixed_s + self.load_s(model_bytes, hardware)


def model_weight_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    """The bytes of a model's weights (bf16 by default), as the roofline model counts them."""
    return config.num_parameters * dtype_bytes
