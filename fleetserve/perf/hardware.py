"""The hardware catalog: peak compute, memory bandwidth, memory size and price of each accelerator."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleetserve.fleet.disaggregation import check_role

GiB = 2**30
TERA = 10**12

HardwareKind = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class Hardware:
    name: str
    kind: HardwareKind
    peak_bf16_flops: float  # dense tensor-core FLOP/s, without structured sparsity
    memory_bandwidth_bytes_s: float
    memory_bytes: int
    price_per_hour_usd: float  # on demand, for one device
    source: str
    # How fast weights reach the device from host memory when a replica starts (fleetserve.perf.cold_start):
    # the host link's datasheet peak, one direction. The default is PCIe 4.0 x16 (16 GT/s x 16 lanes, 128b/130b).
    load_bandwidth_bytes_s: float = 31.5e9

    def __post_init__(self) -> None:
        if self.kind not in ("gpu", "cpu"):
            raise ValueError(f"hardware kind must be 'gpu' or 'cpu', got {self.kind!r}")
        for field_name in ("peak_bf16_flops", "memory_bandwidth_bytes_s", "memory_bytes", "load_bandwidth_bytes_s"):
            if getattr(self, field_name) <= 0:
                raise ValueError(f"{self.name}: {field_name} must be positive, "
                                 f"got {getattr(self, field_name)!r}")
        if self.price_per_hour_usd < 0:
            raise ValueError(f"{self.name}: price_per_hour_usd must not be negative, "
                             f"got {self.price_per_hour_usd!r}")


# Memory sizes are binary: a datasheet "80 GB" H100 shows 81559 MiB in nvidia-smi. Bandwidth and FLOP/s are
# decimal, as datasheets give them. Prices drift month to month; they are a starting point for the planner,
# and a caller with a negotiated price should pass a Hardware of its own (dataclasses.replace).
# Load bandwidth is the host link: PCIe 5.0 x16 (32 GT/s per lane, 128b/130b: 63 GB/s one way) on the H100,
# H200 and MI300X (their datasheets' host interface), PCIe 4.0 x16 (31.5 GB/s, the default) on the others;
# a CPU replica's weights land in its own memory, at its memory bandwidth.
CATALOG: dict[str, Hardware] = {
    hw.name: hw
    for hw in (
        # NVIDIA H100 Tensor Core GPU datasheet (SXM5): BF16 989 TFLOP/s dense (1979 sparse), HBM3 3.35 TB/s,
        # 80 GB. Price: Lambda on-demand 8x H100 SXM, $2.99 per GPU-hour (lambda.ai/pricing, 2025).
        Hardware("h100", "gpu", 989 * TERA, 3.35 * TERA, 80 * GiB, 2.99,
                 "NVIDIA H100 datasheet (SXM5); Lambda on-demand pricing", load_bandwidth_bytes_s=63e9),
        # NVIDIA H200 Tensor Core GPU datasheet (SXM): BF16 989 TFLOP/s dense, HBM3e 4.8 TB/s, 141 GB.
        # Price: RunPod secure-cloud on-demand H200 SXM, $3.59 per hour (runpod.io/pricing, 2025).
        Hardware("h200", "gpu", 989 * TERA, 4.8 * TERA, 141 * GiB, 3.59,
                 "NVIDIA H200 datasheet (SXM); RunPod on-demand pricing", load_bandwidth_bytes_s=63e9),
        # NVIDIA A100 Tensor Core GPU datasheet (80GB SXM4): BF16 312 TFLOP/s dense (624 sparse), HBM2e
        # 2,039 GB/s, 80 GB. Price: Lambda on-demand 8x A100 SXM 80GB, $1.79 per GPU-hour (lambda.ai/pricing).
        Hardware("a100", "gpu", 312 * TERA, 2.039 * TERA, 80 * GiB, 1.79,
                 "NVIDIA A100 datasheet (80GB SXM4); Lambda on-demand pricing"),
        # NVIDIA L40S datasheet: BF16 362 TFLOP/s dense (733 with sparsity), GDDR6 864 GB/s, 48 GB.
        # Price: AWS EC2 g6e.xlarge (1x L40S) on-demand, us-east-1, $1.861 per hour (aws.amazon.com/ec2/pricing).
        Hardware("l40s", "gpu", 362 * TERA, 864e9, 48 * GiB, 1.861,
                 "NVIDIA L40S datasheet; AWS EC2 g6e.xlarge on-demand pricing"),
        # NVIDIA L4 datasheet: BF16 121 TFLOP/s dense (242 with sparsity), GDDR6 300 GB/s, 24 GB.
        # Price: AWS EC2 g6.xlarge (1x L4) on-demand, us-east-1, $0.8048 per hour (aws.amazon.com/ec2/pricing).
        Hardware("l4", "gpu", 121 * TERA, 300e9, 24 * GiB, 0.8048,
                 "NVIDIA L4 datasheet; AWS EC2 g6.xlarge on-demand pricing"),
        # NVIDIA A10G (AWS-only variant of the A10): ~70 TFLOP/s BF16 tensor dense (the A10 datasheet says 125;
        # the A10G has fewer tensor FLOP/s, see baseten.co "NVIDIA A10 vs A10G"), GDDR6 600 GB/s, 24 GB.
        # Price: AWS EC2 g5.xlarge (1x A10G) on-demand, us-east-1, $1.006 per hour (aws.amazon.com/ec2/pricing).
        Hardware("a10g", "gpu", 70 * TERA, 600e9, 24 * GiB, 1.006,
                 "AWS G5 / NVIDIA A10 datasheet (A10G variant); AWS EC2 g5.xlarge on-demand pricing"),
        # AMD Instinct MI300X datasheet: BF16 1307.4 TFLOP/s dense (2614.9 with sparsity), HBM3 5.3 TB/s, 192 GB.
        # Price: Vultr on-demand MI300X, $1.85 per GPU-hour (vultr.com/pricing, 2025); hyperscalers charge ~$6.
        Hardware("mi300x", "gpu", 1307.4 * TERA, 5.3 * TERA, 192 * GiB, 1.85,
                 "AMD Instinct MI300X datasheet; Vultr on-demand pricing", load_bandwidth_bytes_s=63e9),
        # An estimate, not a datasheet: a 2-core AMD EPYC Zen 3 (Milan) VM with AVX2 and no bf16 matrix units.
        # 2 cores x 2 FMA pipes x 8 fp32 lanes x 2 FLOP x ~3 GHz ~ 0.19 TFLOP/s; a 2-core slice of a Milan socket
        # streams ~20 GB/s. Price: AWS EC2 r6a.large (2 vCPU EPYC Milan, 16 GiB) on-demand, us-east-1,
        # $0.1134 per hour. Prefer `fleetserve profile` on a real CPU: these figures are rough.
        Hardware("cpu", "cpu", 0.2 * TERA, 20e9, 16 * GiB, 0.1134,
                 "estimate for a 2-core AMD EPYC Zen 3 VM (AVX2, fp32 FMA); prefer `fleetserve profile`; "
                 "AWS EC2 r6a.large on-demand pricing", load_bandwidth_bytes_s=20e9),
    )
}

ALIASES: dict[str, str] = {
    "h100-sxm": "h100",
    "h100-sxm5": "h100",
    "h100-80gb": "h100",
    "h200-sxm": "h200",
    "a100-80gb": "a100",
    "a100-sxm": "a100",
    "a100-80gb-sxm": "a100",
    "l40s-48gb": "l40s",
    "l4-24gb": "l4",
    "a10": "a10g",
    "mi300": "mi300x",
    "epyc": "cpu",
}


def get_hardware(name: str) -> Hardware:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in CATALOG:
        raise ValueError(f"unknown hardware {name!r}; known: {', '.join(sorted(CATALOG))} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return CATALOG[key]


class FleetEntry(NamedTuple):
    """`devices` devices of one hardware, each a replica of one role (fleetserve.fleet.disaggregation.ROLES)."""
    hardware: Hardware
    devices: int
    role: str = "mixed"


def parse_fleet_spec(spec: str) -> list[FleetEntry]:
    """Parse "h100:8,l4:16" into [(h100, 8, "mixed"), (l4, 16, "mixed")]; a bare name means one device. A third
    field gives the replicas' role: "h100:2:prefill,h100:6:decode" (default mixed)."""
    if not spec or not spec.strip():
        raise ValueError(f"empty fleet spec {spec!r}; expected e.g. 'h100:8,l4:16'")
    fleet: list[FleetEntry] = []
    seen: set[tuple[str, str]] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty entry in fleet spec {spec!r}; expected e.g. 'h100:8,l4:16'")
        name, separator, rest = item.partition(":")
        count_text, role_separator, role_text = rest.partition(":")
        hardware = get_hardware(name)
        count = _parse_count(count_text.strip(), item) if separator else 1
        role = _parse_role(role_text.strip().lower(), item) if role_separator else "mixed"
        if (hardware.name, role) in seen:
            raise ValueError(f"hardware {hardware.name!r} appears twice with role {role!r} in fleet spec {spec!r}; "
                             f"give each hardware and role once, with its count")
        seen.add((hardware.name, role))
        fleet.append(FleetEntry(hardware, count, role))
    return fleet


def fleet_entries(fleet: Sequence[tuple[Hardware, int] | tuple[Hardware, int, str]]) -> list[FleetEntry]:
    """A fleet as FleetEntries, from entries or plain (hardware, count[, role]) tuples."""
    return [FleetEntry(*entry) for entry in fleet]


def _parse_role(text: str, item: str) -> str:
    try:
        return check_role(text)
    except ValueError as error:
        raise ValueError(f"bad role in fleet entry {item!r}: {error} (e.g. 'h100:2:prefill')") from None


def _parse_count(text: str, item: str) -> int:
    if not text.isdigit():
        raise ValueError(f"bad count {text!r} in fleet entry {item!r}; expected a positive integer")
    count = int(text)
    if count <= 0:
        raise ValueError(f"bad count {count} in fleet entry {item!r}; expected a positive integer")
    return count
