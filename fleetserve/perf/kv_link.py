"""How long a prompt's KV cache takes to go from a prefill replica to a decode replica.

A transfer of `tokens` tokens moves `tokens * bytes_per_token` bytes, where a token's KV is a key and a
value vector per layer and KV head (`ModelConfig.kv_bytes_per_token`: 2 x layers x KV heads x head size x
the KV dtype's bytes), over a link of one kind:

    transfer_seconds(tokens) = latency_s + tokens * bytes_per_token / bandwidth_bytes_s

Bandwidths are one direction of the link at its datasheet peak; a real transport reaches less, so a
measured link belongs in a LinkKind of its own (dataclasses.replace).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import Hardware

GB = 10**9


@dataclass(frozen=True)
class LinkKind:
    name: str
    bandwidth_bytes_s: float  # one direction
    latency_s: float
    source: str

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_s <= 0:
            raise ValueError(f"link {self.name}: bandwidth_bytes_s must be positive, got {self.bandwidth_bytes_s!r}")
        if self.latency_s < 0:
            raise ValueError(f"link {self.name}: latency_s must not be negative, got {self.latency_s!r}")


LINK_KINDS: dict[str, LinkKind] = {
    link.name: link
    for link in (
        # NVIDIA H100 datasheet (SXM5): NVLink 4, 900 GB/s total bidirectional per GPU, so 450 GB/s each way.
        # Latency: a GPU-to-GPU peer copy completes in a few µs (CUDA's p2pBandwidthLatencyTest sample).
        LinkKind("nvlink", 450 * GB, 5e-6, "NVIDIA H100 datasheet (NVLink 4: 900 GB/s bidirectional)"),
        # NVIDIA ConnectX-7 user manual: NDR InfiniBand, 400 Gb/s per port, so 50 GB/s. Latency: an RDMA write
        # crosses a switch in 1-2 µs (perftest ib_write_lat); GPUDirect RDMA and posting the work add a few.
        LinkKind("infiniband", 400e9 / 8, 5e-6, "NVIDIA ConnectX-7 user manual (NDR 400 Gb/s per port)"),
        # PCI-SIG PCIe 5.0: 32 GT/s x 16 lanes with 128b/130b encoding, 63 GB/s each way. Latency: a peer copy
        # through the root complex or a PCIe switch measures 4-10 µs (CUDA p2pBandwidthLatencyTest, p2pmark).
        LinkKind("pcie", 32e9 * 16 * 128 / 130 / 8, 10e-6, "PCI-SIG PCIe 5.0 x16 (32 GT/s, 128b/130b)"),
        # IEEE 802.3 100 Gigabit Ethernet: 12.5 GB/s. Latency: a TCP message through two kernel network stacks
        # and a switch takes tens of µs in a datacenter.
        LinkKind("ethernet", 100e9 / 8, 50e-6, "IEEE 802.3 100GbE (100 Gb/s), TCP"),
    )
}

# Hardware built with NVLink (SXM boards); PCIe cards (L4, L40S, A10G) and CPUs have none.
NVLINK_HARDWARE = frozenset({"h100", "h200", "a100"})
NODE_GPUS = 8  # GPUs one NVLink domain or PCIe host holds


def get_link_kind(name: str) -> LinkKind:
    key = name.strip().lower()
    if key not in LINK_KINDS:
        raise ValueError(f"unknown KV link {name!r}; choose one of {sorted(LINK_KINDS)}")
    return LINK_KINDS[key]


def default_link_kind(fleet: Sequence[tuple[Hardware, int] | tuple[Hardware, int, str]]) -> str:
    """The link a fleet like this would most likely have between replicas: NVLink within one node of SXM
    GPUs, PCIe within one node of other GPUs, InfiniBand between nodes of SXM GPUs, Ethernet otherwise (and
    for CPUs)."""
    names = {entry[0].name for entry in fleet}
    devices = sum(entry[1] for entry in fleet)
    if any(entry[0].kind == "cpu" for entry in fleet):
        return "ethernet"
    nvlink = names <= NVLINK_HARDWARE
    if devices <= NODE_GPUS:
        return "nvlink" if nvlink else "pcie"
    return "infiniband" if nvlink else "ethernet"


KV_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}


@dataclass(frozen=True)
class KVLink:
    """A link kind carrying one model's KV cache."""
    kind: LinkKind
    bytes_per_token: int

    def __post_init__(self) -> None:
        if self.bytes_per_token <= 0:
            raise ValueError(f"bytes_per_token must be positive, got {self.bytes_per_token!r}")

    @classmethod
    def of(cls, kind: str | LinkKind, model_config: ModelConfig, kv_dtype: str = "bfloat16") -> KVLink:
        if kv_dtype not in KV_DTYPE_BYTES:
            raise ValueError(f"unknown KV dtype {kv_dtype!r}; choose one of {sorted(KV_DTYPE_BYTES)}")
        link = get_link_kind(kind) if isinstance(kind, str) else kind
        return cls(link, model_config.kv_bytes_per_token(KV_DTYPE_BYTES[kv_dtype]))

    def transfer_bytes(self, tokens: int) -> int:
        return tokens * self.bytes_per_token

    def transfer_seconds(self, tokens: int) -> float:
        return self.kind.latency_s + self.serialization_seconds(tokens)

    def serialization_seconds(self, tokens: int) -> float:
        """The time the link is busy with the bytes, without the latency (which transfers in a row overlap)."""
        return tokens * self.bytes_per_token / self.kind.bandwidth_bytes_s
