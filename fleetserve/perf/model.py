"""What every performance model answers: how long one engine step takes, how long a run of decode steps
takes, and how much KV cache fits."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StepShape:
    """The work in one engine step (one forward pass over a mixed batch).

    prefill_tokens: new prompt tokens computed this step for requests still in prefill (their chunks).
    decode_seqs:    sequences decoding one token this step.
    context_tokens: sum over every sequence in the step of the KV tokens it attends over, counting this
                    step's own new tokens (a decode at position 100 adds 101; a first 512-token chunk adds 512).
    prefill_seqs:   how many sequences the prefill tokens belong to; 0 with prefill tokens means "unknown",
                    and models treat it as one.
    """

    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    prefill_seqs: int = 0

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_seqs", "context_tokens", "prefill_seqs"):
            value = getattr(self, name)
            if type(value) is int and value >= 0:  # the common case, without the slower ABC check below
                continue
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"StepShape.{name} must be a non-negative int, got {value!r}")
        if self.prefill_seqs > self.prefill_tokens:
            raise ValueError(f"StepShape has {self.prefill_seqs} prefill sequences but only "
                             f"{self.prefill_tokens} prefill tokens")
        if self.context_tokens < self.new_tokens:
            raise ValueError(f"StepShape.context_tokens={self.context_tokens} is less than the "
                             f"{self.new_tokens} tokens computed this step; context counts them too")

    @property
    def new_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def num_prefill_seqs(self) -> int:
        if self.prefill_tokens == 0:
            return 0
        return max(self.prefill_seqs, 1)

    @property
    def is_empty(self) -> bool:
        return self.new_tokens == 0


def decode_run_shapes(decode_seqs: int, first_context_tokens: int, num_steps: int) -> Iterator[StepShape]:
    """The steps of a run of pure decodes: step i (0-based) decodes `decode_seqs` sequences over
    `first_context_tokens + i * decode_seqs` context tokens, each sequence one token longer than the step before."""
    for step in range(num_steps):
        yield StepShape(0, decode_seqs, first_context_tokens + step * decode_seqs)


@runtime_checkable
class PerfModel(Protocol):
    """Everything the simulator asks of a performance model; every model implements all of it."""

    name: str

    def step_time(self, shape: StepShape) -> float:
        """Seconds one engine step of this shape takes, end to end (scheduling and sampling included)."""
        ...

    def decode_step_durations(self, decode_seqs: int, first_context_tokens: int, num_steps: int) -> list[float]:
        """step_time of each step of `decode_run_shapes(...)`, equal to the last bit: the simulator prices a
        run of decodes with one call instead of one call a step."""
        ...

    def kv_capacity_tokens(self) -> int:
        """How many tokens of KV cache fit beside the weights and activations."""
        ...
