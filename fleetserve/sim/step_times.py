"""End times of a run of pure decode steps (`fleetserve.perf.model.decode_run_shapes`), priced by the
performance model in one call."""
from __future__ import annotations

from itertools import accumulate

from fleetserve.perf.model import PerfModel


def decode_step_ends(perf: PerfModel, start: float, decode_seqs: int, first_context_tokens: int,
                     num_steps: int) -> list[float]:
    """Each step's end, summed left to right from `start` as a loop of `now += step_time` would."""
    ends = accumulate(perf.decode_step_durations(decode_seqs, first_context_tokens, num_steps), initial=start)
    next(ends)  # `start` itself
    return list(ends)
