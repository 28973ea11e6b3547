"""Small performance models and replicas for simulator tests."""
from __future__ import annotations

from fleetserve.perf.model import StepShape, decode_run_shapes
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.replica import SimReplica


class LinearPerf:
    """Step time = const + a * prefill tokens + b * decode seqs + c * context tokens; exact and easy to sum."""
    name = "linear"

    def __init__(self, kv_tokens: int = 200_000, const: float = 0.01, per_prefill_token: float = 1e-4,
                 per_decode: float = 1e-3, per_context: float = 1e-6) -> None:
        self.kv_tokens = kv_tokens
        self.const, self.per_prefill_token = const, per_prefill_token
        self.per_decode, self.per_context = per_decode, per_context

    def step_time(self, shape: StepShape) -> float:
        return (self.const + self.per_prefill_token * shape.prefill_tokens + self.per_decode * shape.decode_seqs
                + self.per_context * shape.context_tokens)

    def decode_step_durations(self, decode_seqs: int, first_context_tokens: int, num_steps: int) -> list[float]:
        return [self.step_time(shape) for shape in decode_run_shapes(decode_seqs, first_context_tokens, num_steps)]

    def kv_capacity_tokens(self) -> int:
        return self.kv_tokens


def make_replicas(count: int = 1, perf: object | None = None, config: ReplicaConfig | None = None,
                  skip: bool = True, max_len: int = 8192) -> list[SimReplica]:
    perf = perf or LinearPerf()
    return [SimReplica(f"r{i}", "test", perf, config or ReplicaConfig(), max_len,  # type: ignore[arg-type]
                       SimOptions(skip_decodes=skip)) for i in range(count)]
