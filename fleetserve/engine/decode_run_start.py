"""Where a run of decode steps starts and how it is applied to a Scheduler (the run itself is planned and
advanced in fleetserve.engine.decode_run). The simulator times such runs at once instead of step by step."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fleetserve.engine.decode_run import DecodeRun, advance_decode_run, plan_decode_run
from fleetserve.engine.request import Request, RequestStatus

if TYPE_CHECKING:
    from fleetserve.engine.scheduler import Scheduler


def begin_decode_run(scheduler: Scheduler) -> DecodeRun | None:
    """Plan a run of decode steps from here (`fleetserve.engine.decode_run`), or None when the next step
    must be built by `schedule`. With one request to admit, the run opens with the step that admits it,
    begun here as `schedule` begins it, when that step is simple enough (see `_begin_admission_step`)."""
    config, running, policy = scheduler.config, scheduler.running, scheduler.policy
    bounded = config.max_step_ms is not None
    if bounded and not _bounded_run_possible(scheduler):
        return None
    if scheduler.waiting:
        if scheduler.num_offline:
            return None
        if len(running) < config.max_num_seqs:
            if bounded or not _begin_admission_step(scheduler):
                return None
        elif policy.by_priority and policy.outranks(scheduler.waiting.first(), running[scheduler.victim_index()]):
            return None
    budget, reserved = config.max_num_batched_tokens, 0
    if scheduler.num_offline and running:
        # Every online request decodes in a run (offline ones, if any, are at the end of the list), so a
        # step's online tokens are their count, and the offline ones get the policy's room beside them.
        online = sum(1 for request in running if not request.offline)
        budget = min(budget, online + policy.offline_token_room(budget, online, online > 0))
        reserved = scheduler.offline_kv_reserve
    return plan_decode_run(running, scheduler.kv_cache, budget, config.long_prefill_token_threshold,
                           config.max_model_len, reserved)

def apply_decode_run(scheduler: Scheduler, run: DecodeRun, steps: int) -> list[Request]:
    """Advance every request of `run` over its first `steps` steps (at most `run.steps`, none of them
    changed since `begin_decode_run`) and end those at their length stop; returns the ended, in running
    order."""
    finished = advance_decode_run(run, steps, scheduler.kv_cache)
    for request in finished:
        request.status = RequestStatus.FINISHED_LENGTH
        scheduler.remove(request)
    return finished

def _bounded_run_possible(scheduler: Scheduler) -> bool:
    """Under `max_step_ms` a run is planned only of online decodes alone: each step serves them all, as
    `schedule` does whatever the bound, while a prompt chunk's or the offline room's size would change
    from step to step with the decodes' growing context."""
    running = scheduler.running
    if scheduler.num_offline or not running:
        return False
    newest = running[-1]
    return len(newest.prompt_token_ids) + len(newest.output_token_ids) - newest.num_computed_tokens == 1

def _begin_admission_step(scheduler: Scheduler) -> bool:
    """Begin the step that admits the one waiting request as `schedule` begins it (each running request's
    block for its decode token, then the admission), so that the step can open a decode run, the admitted
    request its trailing prefill. Only when that step is this simple: one request waiting, every running
    request decoding, and room in the token budget and for sure in the KV cache; otherwise False, with
    nothing changed. Should no run be planned after all, `schedule` does the same step: its block
    allocations are already there, and the request is running."""
    waiting, running, kv = scheduler.waiting, scheduler.running, scheduler.kv_cache
    decodes = len(running)
    budget = scheduler.config.max_num_batched_tokens
    if len(waiting) != 1 or decodes >= budget:
        return False
    block_size = kv.block_size
    crossing: list[Request] = []
    for request, held in zip(running, kv.held_block_counts(running)):
        done = request.num_computed_tokens
        if len(request.prompt_token_ids) + len(request.output_token_ids) - done != 1:
            return False
        if (done + block_size) // block_size > held:
            crossing.append(request)
    # The admission needs at most a block per token of the request (fewer with a prefix hit).
    if len(crossing) + kv.blocks_needed(waiting.first().num_tokens) > kv.num_free_blocks:
        return False
    for request in crossing:
        kv.allocate_slots(request, 1)
    if scheduler.admit_next_waiting(budget - decodes) is None:
        raise AssertionError(f"request {waiting.first().request_id} was not admitted though its blocks fit")
    return True

