"""The engine's model of its own step time, fitted online to the steps it runs.

Step seconds = const + a * prefill_tokens + b * decode_seqs + c * context_tokens, by least squares over the
measured steps with exponential forgetting (a step `FORGETTING` steps old weighs 1/e as much as the last
one), so the fit follows what changes the machine's speed: other processes, thermal limits, faster kernels.
A weak ridge pull towards the cold-start coefficients keeps it defined before the steps have told every
coefficient apart (a replica that has only decoded knows nothing of prompt tokens yet) and fades as
observations accumulate. The cold start is a slow CPU's (about a second for a 512-token chunk), so the first
steps of a bounded engine err towards small chunks; a few steps of each kind correct it.
"""
from __future__ import annotations

import math

import numpy as np

from fleetserve.perf.model import StepShape

FEATURES = ("const", "prefill_tokens", "decode_seqs", "context_tokens")
COLD_START = (0.02, 2e-3, 2e-3, 1e-6)
# The size of a typical step's features: the ridge pull is that of one observation of that size.
TYPICAL = (1.0, 256.0, 16.0, 8192.0)
FORGETTING = 200.0
PRIOR_WEIGHT = 0.01


class OnlineStepCost:
    name = "online"

    def __init__(self, cold_start: tuple[float, ...] = COLD_START, forgetting_steps: float = FORGETTING) -> None:
        if len(cold_start) != len(FEATURES) or any(value < 0 for value in cold_start):
            raise ValueError(f"cold_start must be {len(FEATURES)} non-negative coefficients ({', '.join(FEATURES)}), "
                             f"got {cold_start!r}")
        self.prior = np.array(cold_start, dtype=float)
        self.decay = math.exp(-1.0 / forgetting_steps)
        self.ridge = np.diag(PRIOR_WEIGHT * np.square(TYPICAL))
        self.gram = np.zeros((len(FEATURES), len(FEATURES)))
        self.moment = np.zeros(len(FEATURES))
        self.num_observed = 0
        self._coefficients: tuple[float, ...] = tuple(cold_start)

    @property
    def coefficients(self) -> dict[str, float]:
        return dict(zip(FEATURES, self._coefficients))

    def step_time(self, shape: StepShape) -> float:
        const, prefill, decode, context = self._coefficients
        return const + prefill * shape.prefill_tokens + decode * shape.decode_seqs + context * shape.context_tokens

    def observe(self, shape: StepShape, seconds: float) -> None:
        """Fit one measured step in."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"a step cannot take {seconds!r} s")
        row = np.array((1.0, shape.prefill_tokens, shape.decode_seqs, shape.context_tokens))
        self.gram = self.decay * self.gram + np.outer(row, row)
        self.moment = self.decay * self.moment + seconds * row
        self.num_observed += 1
        fitted = np.linalg.solve(self.gram + self.ridge, self.moment + self.ridge @ self.prior)
        # A negative coefficient would price some step below zero and so make it look free.
        self._coefficients = tuple(float(value) for value in np.maximum(fitted, 0.0))
