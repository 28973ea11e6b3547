"""The cost of decode rows, learned from the engine's own decode-only steps: what a draft adds to a step.

Speculative decoding must price one more decode row in the next step. A least-squares fit of every step's
time (OnlineStepCost) misattributes here: at batch 1 the decode rows barely vary while the context grows
and the machine's speed drifts, so the context and row coefficients absorb the drift. This model keeps a
recent average of decode-only step times for each row count, and predicts a step of r rows from the line
through those averages (least squares, each count weighted by how often it ran lately). Steps of different
row counts interleave, so drift moves them together and the slope stays the cost of a row. Until two row
counts are known it defers to `fallback`.
"""
from __future__ import annotations

from fleetserve.perf.model import StepShape
from fleetserve.speculative.draft_length import StepTime

SMOOTHING = 0.1  # weight of the newest step in its row count's average
MAX_ROWS = 64


class DecodeRowCost:
    def __init__(self, fallback: StepTime) -> None:
        self.fallback = fallback
        self.mean: dict[int, float] = {}
        self.weight: dict[int, float] = {}

    def observe(self, shape: StepShape, seconds: float) -> None:
        rows = shape.decode_seqs
        if shape.prefill_tokens or not 0 < rows <= MAX_ROWS:
            return
        previous = self.mean.get(rows)
        self.mean[rows] = seconds if previous is None else previous + SMOOTHING * (seconds - previous)
        for count in self.weight:
            self.weight[count] *= 1 - SMOOTHING
        self.weight[rows] = self.weight.get(rows, 0.0) + 1.0

    def step_time(self, shape: StepShape) -> float:
        if shape.prefill_tokens or len(self.mean) < 2:
            return self.fallback.step_time(shape)
        total = sum(self.weight.values())
        mean_rows = sum(r * w for r, w in self.weight.items()) / total
        mean_time = sum(self.mean[r] * w for r, w in self.weight.items()) / total
        spread = sum(w * (r - mean_rows) ** 2 for r, w in self.weight.items())
        slope = sum(w * (r - mean_rows) * (self.mean[r] - mean_time) for r, w in self.weight.items()) / spread
        return mean_time + max(slope, 0.0) * (shape.decode_seqs - mean_rows)
