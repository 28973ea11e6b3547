"""A step-time model fitted to measurements of the real engine (`fleetserve profile`), saved as JSON.

Step time = sum of coefficient * feature, with the features of a step's shape:
- const: the fixed cost of a step (Python scheduling, kernel dispatch, reading the weights once);
- batched: 1 when the step has more than one token; with dense weights a single row takes the
  matrix-vector path, far cheaper than the first rows of a matrix-matrix product;
- tiled, dense: 1 when the step's token count takes the GGUF-block kernel's register-tile path (more than
  KERNEL_FUSED_MAX_ROWS) or the dequantize-then-BLAS path (KERNEL_DENSE_FROM_ROWS and more): each
  dequantizes every weight once per step, a jump in step time that no per-token term can follow;
- prefill_tokens, decode_seqs: tokens through the linear layers;
- prefill_seqs: per prefilling sequence (its logits, block tables, a chunk of attention set-up);
- decode_context: KV tokens the decoding sequences attend over;
- prefill_pairs: (query, key) pairs the prefill chunks score, chunk x cached context plus the triangle.
The last two are exact for a BatchShape (fleetserve.perf.step_shape) and estimated for a plain StepShape.
Coefficients are fitted on relative error (small steps, decodes, which set TPOT, weigh as much as big
ones), non-negative (the model never predicts a negative time), with a robust loss (a step slowed by
another process on the machine barely moves the fit).

The JSON records what the profile was measured on (hardware name, CPU or GPU model, threads, model,
dtype, KV-cache dtype, the engine settings) and its KV capacity in tokens, which is what the simulated
replica gets: the engine's own block count for the KV memory it was given.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fleetserve.perf.model import StepShape, decode_run_shapes
from fleetserve.perf.step_shape import BatchShape, decode_context, prefill_pairs

PROFILE_FORMAT = "fleetserve-profile/1"
# The engine's block-kernel paths (fleetserve/kernels/quantized_matmul_cpu.c FUSED_ROWS and
# fleetserve.model.quantized.DENSE_FROM_ROWS; a test checks they agree), kept here so the simulator
# needs no torch.
KERNEL_FUSED_MAX_ROWS = 8
KERNEL_DENSE_FROM_ROWS = 192
ROBUST_SCALE = 0.05  # relative errors beyond ~5% count less and less (soft L1 loss)

FEATURES: dict[str, Callable[[StepShape], float]] = {
    "const": lambda shape: 1.0,
    "batched": lambda shape: 1.0 if shape.new_tokens > 1 else 0.0,
    "tiled": lambda shape: 1.0 if KERNEL_FUSED_MAX_ROWS < shape.new_tokens < KERNEL_DENSE_FROM_ROWS else 0.0,
    "dense": lambda shape: 1.0 if shape.new_tokens >= KERNEL_DENSE_FROM_ROWS else 0.0,
    "prefill_tokens": lambda shape: float(shape.prefill_tokens),
    "decode_seqs": lambda shape: float(shape.decode_seqs),
    "prefill_seqs": lambda shape: float(shape.num_prefill_seqs),
    "decode_context": decode_context,
    "prefill_pairs": prefill_pairs,
}


@dataclass(frozen=True)
class StepSample:
    """One measured step: its shape and how long `engine.step()` took."""
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    prefill_seqs: int
    seconds: float
    decode_context_tokens: int | None = None  # None: estimated from the totals
    prefill_pairs: float | None = None

    @classmethod
    def of(cls, shape: StepShape, seconds: float) -> StepSample:
        if isinstance(shape, BatchShape):
            return cls(shape.prefill_tokens, shape.decode_seqs, shape.context_tokens, shape.prefill_seqs, seconds,
                       shape.decode_context_tokens, shape.prefill_pairs)
        return cls(shape.prefill_tokens, shape.decode_seqs, shape.context_tokens, shape.prefill_seqs, seconds)

    @property
    def shape(self) -> StepShape:
        if self.decode_context_tokens is None or self.prefill_pairs is None:
            return StepShape(self.prefill_tokens, self.decode_seqs, self.context_tokens, self.prefill_seqs)
        return BatchShape(self.prefill_tokens, self.decode_seqs, self.context_tokens, self.prefill_seqs,
                          self.decode_context_tokens, self.prefill_pairs)


@dataclass
class ProfiledModel:
    coefficients: dict[str, float]
    kv_capacity: int
    hardware: str
    measured_on: dict[str, Any] = field(default_factory=dict)  # cpu/gpu model, threads, model, dtypes, engine
    samples: list[StepSample] = field(default_factory=list)
    source: str | None = None  # the file it was loaded from

    def __post_init__(self) -> None:
        unknown = sorted(set(self.coefficients) - set(FEATURES))
        if unknown:
            raise ValueError(f"profile has unknown features {unknown}; known: {list(FEATURES)}")
        bad = {name: value for name, value in self.coefficients.items()
               if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0}
        if bad:
            raise ValueError(f"profile coefficients must be finite and >= 0, got {bad}")
        if not isinstance(self.kv_capacity, int) or self.kv_capacity < 1:
            raise ValueError(f"profile kv_capacity_tokens must be a positive integer, got {self.kv_capacity!r}")
        self._weights = [(FEATURES[name], value) for name, value in self.coefficients.items() if value]
        self.name = f"profiled/{self.hardware}"

    # --- PerfModel ---------------------------------------------------------------------------------

    def step_time(self, shape: StepShape) -> float:
        if shape.is_empty:
            return 0.0
        return sum(value * feature(shape) for feature, value in self._weights)

    def kv_capacity_tokens(self) -> int:
        return self.kv_capacity

    def decode_step_durations(self, decode_seqs: int, first_context_tokens: int, num_steps: int) -> list[float]:
        return [self.step_time(shape) for shape in decode_run_shapes(decode_seqs, first_context_tokens, num_steps)]

    # --- fitting -------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, samples: list[StepSample], kv_capacity: int, hardware: str,
            measured_on: dict[str, Any] | None = None, features: tuple[str, ...] = tuple(FEATURES)
            ) -> ProfiledModel:
        """Non-negative coefficients minimizing the relative errors, with a robust loss so that a few steps
        slowed by another process do not pull the fit."""
        from scipy.optimize import least_squares, nnls
        usable = [sample for sample in samples if sample.seconds > 0 and not sample.shape.is_empty]
        if len(usable) < len(features):
            raise ValueError(f"fitting {len(features)} features needs at least that many measured steps, "
                             f"got {len(usable)}")
        matrix = np.array([[FEATURES[name](sample.shape) for name in features] for sample in usable])
        matrix /= np.array([sample.seconds for sample in usable])[:, None]
        # Unknowns span many magnitudes (seconds per step to seconds per attended pair): solve for each
        # one's share of a typical step instead, then scale back.
        typical = 1.0 / np.abs(matrix).mean(axis=0).clip(min=1e-30)
        scaled = matrix * typical
        start, _ = nnls(scaled, np.ones(len(usable)))
        fit = least_squares(lambda x: scaled @ x - 1, start, bounds=(0, np.inf), loss="soft_l1",
                            f_scale=ROBUST_SCALE)
        coefficients = fit.x * typical
        return cls(dict(zip(features, (float(c) for c in coefficients))), kv_capacity, hardware,
                   dict(measured_on or {}), list(samples))

    def fit_errors(self) -> dict[str, float]:
        """Relative errors of the fit over its own samples: mean and max of |predicted / measured - 1|."""
        errors = [abs(self.step_time(s.shape) / s.seconds - 1) for s in self.samples if s.seconds > 0]
        if not errors:
            return {"mean_relative_error": math.nan, "max_relative_error": math.nan}
        return {"mean_relative_error": float(np.mean(errors)), "max_relative_error": float(np.max(errors))}

    # --- files ---------------------------------------------------------------------------------------

    def to_jsonable(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, "hardware": self.hardware, "measured_on": self.measured_on,
                "kv_capacity_tokens": self.kv_capacity, "coefficients": self.coefficients,
                "fit": self.fit_errors(), "samples": [asdict(sample) for sample in self.samples]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_jsonable(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ProfiledModel:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"profile not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a JSON profile ({error})") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: not a `fleetserve profile` result (format {found!r}, expected "
                             f"{PROFILE_FORMAT!r})")
        missing = sorted({"hardware", "kv_capacity_tokens", "coefficients"} - set(data))
        if missing:
            raise ValueError(f"{path}: profile lacks {missing}")
        try:
            samples = [StepSample(**sample) for sample in data.get("samples", [])]
            model = cls(dict(data["coefficients"]), data["kv_capacity_tokens"], str(data["hardware"]),
                        dict(data.get("measured_on") or {}), samples, str(path))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None
        return model
