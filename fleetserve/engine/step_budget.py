"""A step's token budget under a time bound (`SchedulerConfig.max_step_ms`).

A step lasts as long as its slowest part, and every decoding stream waits for the whole step, so one long
prompt chunk stalls every stream's next token. With a bound, the step's decodes are always served and its
prompt chunks get the most tokens that the step-cost model predicts still end the step within the bound;
at least `min_chunk` of them, so a prompt progresses even when the decodes alone fill the bound.

The cost model is any object with `step_time(StepShape) -> float` (seconds): the simulator's performance
model on the virtual clock, the engine's own fit of its measured steps (fleetserve.engine.online_step_cost)
on the wall clock.
"""
from __future__ import annotations

from typing import Protocol

from fleetserve.perf.model import StepShape


class StepCost(Protocol):
    def step_time(self, shape: StepShape) -> float:
        """Seconds a step of this shape is predicted to take."""
        ...


def prompt_token_room(cost: StepCost, max_step_s: float, decode_seqs: int, decode_context: int,
                      prefill_cached: int, room: int, min_chunk: int) -> int:
    """The most prompt tokens, from `min(min_chunk, room)` to `room`, that a step beside `decode_seqs` decodes
    (attending over `decode_context` tokens in all) can compute, after `prefill_cached` tokens of their
    request, within `max_step_s`. A bisection: it assumes the step time grows with the prompt tokens."""
    if room <= 0:
        return 0

    def fits(tokens: int) -> bool:
        shape = StepShape(tokens, decode_seqs, decode_context + prefill_cached + tokens, 1)
        return cost.step_time(shape) <= max_step_s

    low = min(min_chunk, room)
    if fits(room):
        return room
    if not fits(low):
        return low
    high = room  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
