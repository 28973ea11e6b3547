"""Disaggregated units: what the planner may rent besides single devices when it plans with replica roles.

A unit is a group of one hardware type's devices, `prefill` of them prefill replicas and `decode` of them
decode replicas ("h100-1p3d": one prefill, three decode H100s), priced as its devices, its capacity per
length bucket found by simulating the group with the disaggregation rule, as a single device's is. The
integer program then treats a unit as one more type to rent, so it picks units only for the buckets where
they are cheaper per request than mixed devices.

A plan's devices are kept by name: a hardware type ("h100": mixed devices) or a unit ("h100-1p3d": whole
units). A fleet is counted by (hardware, role) as "h100", "h100:prefill", "h100:decode" (the names the
simulator's stats use), which `fleet_spec_with_roles` writes as `--fleet` takes it:
"h100:2,h100:1:prefill,h100:3:decode". The routing plan names hardware pools only, as the `bucket` policy
and the live router know them: a unit's share of a bucket goes to its hardware's pool, where the policy
picks among the mixed and decode replicas, and the rule then decides where the prompt is prefilled.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleetserve.perf.hardware import FleetEntry, Hardware


@dataclass(frozen=True)
class DisaggregatedUnit:
    hardware: Hardware
    prefill: int
    decode: int

    def __post_init__(self) -> None:
        if self.prefill < 1 or self.decode < 1:
            raise ValueError(f"a disaggregated unit needs at least one prefill and one decode device, got "
                             f"{self.prefill}:{self.decode}")

    @property
    def name(self) -> str:
        return f"{self.hardware.name}-{self.prefill}p{self.decode}d"

    @property
    def devices(self) -> int:
        return self.prefill + self.decode

    @property
    def price_per_hour_usd(self) -> float:
        return self.devices * self.hardware.price_per_hour_usd

    def fleet(self) -> list[FleetEntry]:
        return [FleetEntry(self.hardware, self.prefill, "prefill"), FleetEntry(self.hardware, self.decode, "decode")]


def parse_unit_shapes(text: str) -> list[tuple[int, int]]:
    """"1:1,1:3" -> [(1, 1), (1, 3)]: the prefill:decode shapes of the units to consider."""
    shapes: list[tuple[int, int]] = []
    for part in (part.strip() for part in text.split(",")):
        prefill, separator, decode = part.partition(":")
        if not separator or not prefill.strip().isdigit() or not decode.strip().isdigit():
            raise ValueError(f"unit shape {part!r} in {text!r} is not PREFILL:DECODE device counts, e.g. 1:3")
        shape = (int(prefill), int(decode))
        if min(shape) < 1:
            raise ValueError(f"unit shape {part!r} needs at least one prefill and one decode device")
        if shape in shapes:
            raise ValueError(f"unit shape {part!r} is given twice in {text!r}")
        shapes.append(shape)
    return shapes


def units_for(hardware: Sequence[Hardware], shapes: Sequence[tuple[int, int]]) -> list[DisaggregatedUnit]:
    return [DisaggregatedUnit(hw, prefill, decode) for hw in hardware for prefill, decode in shapes]


def devices_with_roles(counts: Mapping[str, int], units: Mapping[str, DisaggregatedUnit]) -> dict[str, int]:
    """A plan's counts (hardware types and units, by name) as devices per "hardware" or "hardware:role"."""
    devices: dict[str, int] = {}
    for name, count in counts.items():
        if count <= 0:
            continue
        unit = units.get(name)
        if unit is None:
            devices[name] = devices.get(name, 0) + count
            continue
        for hardware, per_unit, role in unit.fleet():
            key = f"{hardware.name}:{role}"
            devices[key] = devices.get(key, 0) + count * per_unit
    return devices


def split_key(key: str) -> tuple[str, str]:
    """"h100:decode" -> ("h100", "decode"); "h100" -> ("h100", "mixed")."""
    hardware, _, role = key.partition(":")
    return hardware, role or "mixed"


def fleet_spec_with_roles(devices: Mapping[str, int]) -> str:
    """Devices per "hardware" or "hardware:role" as a `--fleet` spec: "h100:2,h100:1:prefill,h100:3:decode"."""
    parts = []
    for key, count in devices.items():
        if count <= 0:
            continue
        hardware, role = split_key(key)
        parts.append(f"{hardware}:{count}" + ("" if role == "mixed" else f":{role}"))
    return ",".join(parts)


def pool_shares(shares: Mapping[str, float], units: Mapping[str, DisaggregatedUnit]) -> dict[str, float]:
    """A bucket's shares by plan name, as shares by hardware pool (a unit's go to its hardware's)."""
    pools: dict[str, float] = {}
    for name, share in shares.items():
        pool = units[name].hardware.name if name in units else name
        pools[pool] = pools.get(pool, 0.0) + share
    return pools
