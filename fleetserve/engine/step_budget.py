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

from fleetserve.engine.request import Request
from fleetserve.perf.model import StepShape


def check_max_step_ms(value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"max_step_ms must be > 0 (the milliseconds a step may take), got {value!r}; "
                         f"leave it unset for no time bound")


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


def bounded_budget(running: list[Request], cost: StepCost, max_step_ms: float, max_tokens: int,
                   min_chunk: int) -> tuple[int, int]:
    """(the step's token budget, the tokens of it for prompt chunks) under `max_step_ms`: every decode of the
    running requests, and the prompt tokens the cost model predicts fit beside them."""
    decodes = context = 0
    prefill_cached = -1  # the computed tokens of the first running request still in its prompt
    for request in running:
        done = request.num_computed_tokens
        if len(request.prompt_token_ids) + len(request.output_token_ids) - done == 1:
            rows = 1 + len(request.spec_token_ids)  # drafts to verify are decode rows too
            decodes += rows
            context += rows * done + rows * (rows + 1) // 2
        elif prefill_cached < 0:
            prefill_cached = done
    chunk_room = prompt_token_room(cost, max_step_ms / 1000, decodes, context, max(prefill_cached, 0),
                                   max_tokens - decodes, min_chunk)
    return min(max_tokens, decodes + chunk_room), chunk_room
