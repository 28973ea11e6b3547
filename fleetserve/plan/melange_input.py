"""Mélange's solver input (tyler-griggs/melange-release, `melange/config/example.json`) as a `PlanInput`.

    {"gpu_info": {"A10G": {"cost": 1.01, "tputs": [[2, 1], [5, 2]]}, ...},
     "workload_distribution": [[0.2, 0.1], [0.5, 0.2]], "total_request_rate": 30.0, "slice_factor": 1}

`cost` is $/hour; `tputs` and `workload_distribution` are [input bucket][output bucket]: the most requests/s
one GPU sustains on that bucket, and the bucket's share of all requests. `slice_factor` is optional (Mélange's
default is 1). A `tputs` entry of 0 means the GPU cannot serve that bucket.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fleetserve.plan.assignment import PlanInput

_REQUIRED = ("gpu_info", "workload_distribution", "total_request_rate")
_OPTIONAL = ("slice_factor",)
_EXAMPLE = '{"gpu_info": {"A10G": {"cost": 1.01, "tputs": [[2, 1], [5, 2]]}}, ...}'


def read_melange(path: str | Path) -> PlanInput:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ValueError(f"cannot read Mélange input {str(path)!r}: {error.strerror or error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                         f"expected Mélange's solver input, e.g. {_EXAMPLE}") from error
    try:
        return _plan_input(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _plan_input(data: Any) -> PlanInput:
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with {', '.join(_REQUIRED)}, got {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}; Mélange's input needs {', '.join(_REQUIRED)} "
                         f"(and optionally slice_factor)")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; Mélange's input has only "
                         f"{', '.join(_REQUIRED + _OPTIONAL)}")
    gpu_info = data["gpu_info"]
    if not isinstance(gpu_info, dict) or not gpu_info:
        raise ValueError(f"gpu_info must be a non-empty object of GPU name -> {{cost, tputs}}, e.g. {_EXAMPLE}")
    costs: dict[str, float] = {}
    capacity: dict[str, list[list[float]]] = {}
    for name, info in gpu_info.items():
        if not isinstance(info, dict):
            raise ValueError(f"gpu_info[{name!r}] must be an object with cost and tputs, got {info!r}")
        for key in ("cost", "tputs"):
            if key not in info:
                raise ValueError(f"gpu_info[{name!r}] is missing {key!r} (it needs cost in $/hour and tputs, "
                                 f"the most requests/s per GPU for each [input bucket][output bucket])")
        costs[name] = _number(info["cost"], f"gpu_info[{name!r}].cost")
        capacity[name] = _matrix(info["tputs"], f"gpu_info[{name!r}].tputs")
    shares = _matrix(data["workload_distribution"], "workload_distribution")
    for name, tputs in capacity.items():
        if _shape(tputs) != _shape(shares):
            raise ValueError(f"gpu_info[{name!r}].tputs has shape {_shape(tputs)} but workload_distribution has "
                             f"{_shape(shares)}; both are [input bucket][output bucket], one entry per bucket")
    slice_factor = data.get("slice_factor", 1)
    if not isinstance(slice_factor, int) or isinstance(slice_factor, bool) or slice_factor < 1:
        raise ValueError(f"slice_factor must be a whole number >= 1, got {slice_factor!r}")
    return PlanInput(costs=costs, capacity=capacity,
                     shares=shares,
                     total_rate=_number(data["total_request_rate"], "total_request_rate"),
                     slice_factor=slice_factor)


def _shape(matrix: list[list[float]]) -> str:
    widths = sorted({len(row) for row in matrix})
    return f"{len(matrix)}x{widths[0]}" if len(widths) == 1 else f"{len(matrix)} rows of lengths {widths}"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number, got {value!r}")
    return float(value)


def _matrix(value: Any, where: str) -> list[list[float]]:
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        raise ValueError(f"{where} must be a non-empty list of non-empty rows ([input bucket][output bucket]), "
                         f"got {value!r}")
    return [[_number(entry, f"{where}[{i}][{j}]") for j, entry in enumerate(row)] for i, row in enumerate(value)]
