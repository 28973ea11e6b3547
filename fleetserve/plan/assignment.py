"""Which hardware, how many, and which type serves which bucket: the planner's integer program.

Input: per hardware type its hourly price and, for every (input length, output length) bucket, the highest
request rate one device sustains on that bucket alone; the workload's share of each bucket and its total
rate. A type serving a fraction f of bucket b carries the load f * rate_b / capacity[g][b], in devices, and
the loads a type carries must fit in its (whole) device count n_g. Minimise sum(cost_g * n_g).

Two variants (Mélange, Griggs et al., arXiv 2404.14527):
- `solve_melange`: each bucket is cut into `slice_factor` equal slices and every slice goes to one type.
  Mélange gives each (slice, type) pair a binary variable; the slices of a bucket are interchangeable, so
  here a whole variable counts how many of a bucket's slices a type takes (0..slice_factor). The optimum is
  the same, and the solver does not branch over permutations of identical slices.
- `solve_split`: a bucket's traffic may be divided among types in any fractions. Every Mélange assignment is
  one such division, so this is never dearer.

Both are solved to a proven optimum (zero MIP gap), then once more among the fleets of that cost for the
fewest devices, so a tie never depends on the solver's search order.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

Bucket = tuple[int, int]

# Fleets that cost more than the optimum by less than this fraction count as ties (HiGHS's own feasibility
# tolerance is 1e-7, so finer price differences are not resolved anyway).
_TIE_COST_TOLERANCE = 1e-9
# Fractions of a bucket below this are solver noise, not routing.
_NEGLIGIBLE_SHARE = 1e-9


def fleet_spec(devices: Mapping[str, int]) -> str:
    """"A10G:3,A100-80GB:1": device counts in the form `--fleet` takes (types with none left out)."""
    return ",".join(f"{name}:{count}" for name, count in devices.items() if count > 0)


class Infeasible(ValueError):
    """No fleet of the listed hardware can carry the workload. `bucket` names the culprit when one is known."""

    def __init__(self, message: str, bucket: Bucket | None = None):
        super().__init__(message)
        self.bucket = bucket


@dataclass(frozen=True)
class PlanInput:
    costs: dict[str, float]  # hardware -> price per device-hour
    # hardware -> [input bucket][output bucket] -> highest req/s ONE device sustains; 0: cannot serve it
    capacity: dict[str, list[list[float]]]
    shares: list[list[float]]  # [input bucket][output bucket] -> fraction of all requests; sums to 1
    total_rate: float  # req/s
    slice_factor: int = 1  # solve_melange cuts every bucket into this many equal slices

    def __post_init__(self) -> None:
        if not self.costs:
            raise ValueError("plan input lists no hardware; give at least one type with its cost and capacities")
        for name, cost in self.costs.items():
            if not _is_number(cost) or not math.isfinite(cost) or cost < 0:
                raise ValueError(f"cost of {name!r} must be a finite number >= 0 ($/device-hour), got {cost!r}")
        if set(self.capacity) != set(self.costs):
            raise ValueError(f"capacity and costs must name the same hardware: capacity has "
                             f"{sorted(self.capacity)}, costs have {sorted(self.costs)}")
        shape = _matrix_shape(self.shares, "shares")
        for name, matrix in self.capacity.items():
            capacity_shape = _matrix_shape(matrix, f"capacity of {name!r}")
            if capacity_shape != shape:
                raise ValueError(f"capacity of {name!r} is {_shape_text(capacity_shape)} but shares are "
                                 f"{_shape_text(shape)}; both are [input bucket][output bucket]")
            _check_entries(matrix, f"capacity of {name!r} (req/s per device)")
        _check_entries(self.shares, "shares")
        total_share = sum(sum(row) for row in self.shares)
        if not math.isclose(total_share, 1.0, rel_tol=0, abs_tol=1e-6):
            raise ValueError(f"shares must sum to 1 (the fraction of requests in each bucket), they sum to "
                             f"{total_share!r}")
        if not _is_number(self.total_rate) or not math.isfinite(self.total_rate) or self.total_rate <= 0:
            raise ValueError(f"total_rate must be a finite number of requests/s > 0, got {self.total_rate!r}")
        if not isinstance(self.slice_factor, int) or isinstance(self.slice_factor, bool) or self.slice_factor < 1:
            raise ValueError(f"slice_factor must be a whole number >= 1, got {self.slice_factor!r}")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.shares), len(self.shares[0])


@dataclass(frozen=True)
class Assignment:
    devices: dict[str, int]  # hardware -> count; only types with count > 0
    cost_per_hour: float
    # every bucket with traffic -> {hardware: fraction of that bucket's requests}; fractions sum to 1
    bucket_shares: dict[Bucket, dict[str, float]]
    utilization: dict[str, float]  # per hardware in `devices`: planned load (in devices) / devices

    @property
    def fleet_spec(self) -> str:
        return fleet_spec(self.devices)


def solve_melange(plan: PlanInput) -> Assignment:
    """Mélange's program: every one of a bucket's `slice_factor` slices goes to exactly one type."""
    return _solve(plan, units_per_bucket=plan.slice_factor, whole_units=True)


def solve_split(plan: PlanInput) -> Assignment:
    """Like `solve_melange`, but a bucket's traffic may be divided among types in any fractions."""
    return _solve(plan, units_per_bucket=1, whole_units=False)


def _solve(plan: PlanInput, units_per_bucket: int, whole_units: bool) -> Assignment:
    hardware = list(plan.costs)
    rows, columns = plan.shape
    rates = {(i, j): plan.shares[i][j] * plan.total_rate
             for i in range(rows) for j in range(columns) if plan.shares[i][j] > 0}
    # Variables: n_g for every type, then one per (bucket, type that can serve it): the bucket's units it takes.
    pairs = [(bucket, g) for bucket in rates for g, name in enumerate(hardware)
             if plan.capacity[name][bucket[0]][bucket[1]] > 0]
    served = {bucket for bucket, _ in pairs}
    for bucket in rates:
        if bucket not in served:
            raise Infeasible(
                f"bucket {bucket} (input bucket {bucket[0]}, output bucket {bucket[1]}) carries "
                f"{rates[bucket]:.6g} req/s but no listed hardware can serve it (capacity 0 on every type tried: "
                f"{', '.join(hardware)}); add hardware that can, relax the SLO, or drop these requests from "
                f"the workload", bucket=bucket)
    num_types, num_vars = len(hardware), len(hardware) + len(pairs)

    per_bucket = np.zeros((len(rates), num_vars))
    bucket_row = {bucket: row for row, bucket in enumerate(rates)}
    load = np.zeros((num_types, num_vars))
    load[:, :num_types] = -np.eye(num_types)
    for column, (bucket, g) in enumerate(pairs, start=num_types):
        per_bucket[bucket_row[bucket], column] = 1
        capacity = plan.capacity[hardware[g]][bucket[0]][bucket[1]]
        load[g, column] = rates[bucket] / units_per_bucket / capacity
    constraints = [LinearConstraint(per_bucket, units_per_bucket, units_per_bucket),
                   LinearConstraint(load, -np.inf, 0)]
    integrality = np.concatenate([np.ones(num_types), np.full(len(pairs), 1 if whole_units else 0)])
    bounds = Bounds(np.zeros(num_vars), np.concatenate([np.full(num_types, np.inf),
                                                        np.full(len(pairs), units_per_bucket)]))
    cost = np.concatenate([np.array([plan.costs[name] for name in hardware], dtype=float), np.zeros(len(pairs))])

    cheapest = _run_milp(cost, integrality, bounds, constraints)
    best_cost = float(cost[:num_types] @ np.round(cheapest[:num_types]))
    within_best_cost = LinearConstraint(cost, -np.inf, best_cost + _TIE_COST_TOLERANCE * max(1.0, best_cost))
    device_count = np.concatenate([np.ones(num_types), np.zeros(len(pairs))])
    solution = _run_milp(device_count, integrality, bounds, [*constraints, within_best_cost])

    counts = {name: int(round(solution[g])) for g, name in enumerate(hardware)}
    units = np.round(solution[num_types:]) if whole_units else solution[num_types:]
    bucket_shares: dict[Bucket, dict[str, float]] = {bucket: {} for bucket in rates}
    planned_load = dict.fromkeys(hardware, 0.0)
    for column, ((bucket, g), taken) in enumerate(zip(pairs, units), start=num_types):
        name = hardware[g]
        if counts[name] > 0 and taken / units_per_bucket > _NEGLIGIBLE_SHARE:
            bucket_shares[bucket][name] = float(taken)
            planned_load[name] += float(load[g, column] * taken)
    for bucket, shares in bucket_shares.items():
        total = sum(shares.values())
        bucket_shares[bucket] = {name: taken / total for name, taken in shares.items()}
    devices = {name: count for name, count in counts.items() if count > 0}
    return Assignment(devices=devices,
                      cost_per_hour=sum(plan.costs[name] * count for name, count in devices.items()),
                      bucket_shares=bucket_shares,
                      utilization={name: planned_load[name] / count for name, count in devices.items()})


def _run_milp(objective: np.ndarray, integrality: np.ndarray, bounds: Bounds,
              constraints: list[LinearConstraint]) -> np.ndarray:
    result = milp(objective, integrality=integrality, bounds=bounds, constraints=constraints,
                  options={"mip_rel_gap": 0.0})
    if not result.success or result.x is None:
        raise Infeasible(f"the assignment program has no solution: HiGHS says {result.message!r} "
                         f"(status {result.status})")
    return np.asarray(result.x)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matrix_shape(matrix: object, what: str) -> tuple[int, int]:
    if not isinstance(matrix, list) or not matrix or not all(isinstance(row, list) for row in matrix):
        raise ValueError(f"{what} must be a non-empty list of rows ([input bucket][output bucket]), got {matrix!r}")
    widths = {len(row) for row in matrix}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"{what} must have rows of one non-zero length, got row lengths "
                         f"{[len(row) for row in matrix]}")
    return len(matrix), widths.pop()


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _check_entries(matrix: list[list[float]], what: str) -> None:
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{what}[{i}][{j}] must be a finite number >= 0, got {value!r}")
