"""Decode skipping: a run of steps in which every running request decodes one token, advanced at once.

While no request arrives, none finishes, none is waiting to be admitted and the KV cache has blocks to
spare, each engine step is the same: every running request gets one token, in running order. A segment
is such a run, planned from the scheduler's state when it begins and ended early (after the step in
progress) when a request arrives. Applying it does to the Scheduler and KVCacheManager what that many
steps would: the same block allocations (all before any release, as within the steps), the same
computed-token counts and outputs, the same prefix-cache entries, and the finishing requests ended in
running order, so everything after it is the same as stepping token by token.

A segment is refused, and the step simulated in full, when a step would do anything else: a request
still in prefill, one that could be admitted (a waiting request and a free sequence slot), more running
requests than the token budget, or too few free KV blocks for even one step (the scheduler preempts).

Step end times are computed `CHUNK_STEPS` at a time: the replica wakes at the end of each chunk only to
compute the next, so a long segment cut short by an arrival does not pay for steps it never ran.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from fleetserve.engine.request import RequestStatus
from fleetserve.sim.step_times import decode_step_ends
from fleetserve.sim.tracked import TrackedRequest

if TYPE_CHECKING:
    from fleetserve.sim.replica import SimReplica

CHUNK_STEPS = 64


class DecodeSegment:
    __slots__ = ("start", "tracked", "steps_left", "steps", "ends", "first_context")

    def __init__(self, start: float, tracked: list[TrackedRequest], steps_left: list[int], steps: int,
                 first_context: int) -> None:
        self.start = start
        self.tracked = tracked
        self.steps_left = steps_left  # per request: steps until it finishes
        self.steps = steps  # steps to apply
        self.first_context = first_context  # context tokens of the first step
        self.ends: list[float] = []  # end time of each step computed so far

    def extend(self, replica: SimReplica) -> float:
        """Compute the next chunk of step end times; returns the time to wake up at."""
        done = len(self.ends)
        count = min(CHUNK_STEPS, self.steps - done)
        n = len(self.tracked)
        start = self.ends[-1] if self.ends else self.start
        self.ends.extend(decode_step_ends(replica.perf, start, n, self.first_context + done * n, count))
        return self.ends[-1]

    @property
    def complete(self) -> bool:
        return len(self.ends) >= self.steps

    @property
    def wake_time(self) -> float:
        return self.ends[min(self.steps, len(self.ends)) - 1]

    def cut_at(self, now: float) -> bool:
        """Stop after the step in progress at `now` (or the one ending exactly then); True if shortened."""
        done = bisect_right(self.ends, now)
        keep = done if done and self.ends[done - 1] == now else done + 1
        if keep >= self.steps:
            return False
        self.steps = keep
        return True


def plan_segment(replica: SimReplica, now: float) -> DecodeSegment | None:
    scheduler, kv = replica.scheduler, replica.kv
    running = scheduler.running
    n = len(running)
    config = scheduler.config
    if n == 0 or n > config.max_num_batched_tokens or (scheduler.waiting and n < config.max_num_seqs):
        return None
    newest = running[-1]  # the likeliest to be in prefill still
    if len(newest.prompt_token_ids) + len(newest.output_token_ids) - newest.num_computed_tokens != 1:
        return None
    max_len = config.max_model_len
    steps = 1 << 30
    context = 0
    computed: list[int] = []
    steps_left: list[int] = []
    for request in running:
        done = request.num_computed_tokens
        outputs = len(request.output_token_ids)
        total = len(request.prompt_token_ids) + outputs
        if total - done != 1:
            return None
        left = min(request.sampling_params.max_tokens - outputs, max_len - total)
        if left < 1:
            left = 1
        if left < steps:
            steps = left
        context += done
        computed.append(done)
        steps_left.append(left)
    tables = kv.tables
    block_size = kv.block_size
    have = [len(tables[request.request_id]) for request in running]
    free = kv.num_free_blocks
    if _blocks_needed(computed, have, steps, block_size) > free:
        steps = _most_steps_that_fit(computed, have, steps, block_size, free)
        if steps == 0:
            return None
    by_id = replica.tracked
    return DecodeSegment(now, [by_id[request.request_id] for request in running], steps_left, steps, context + n)


def _blocks_needed(computed: list[int], have: list[int], steps: int, block_size: int) -> int:
    total = 0
    for done, held in zip(computed, have):
        extra = (done + steps + block_size - 1) // block_size - held
        if extra > 0:
            total += extra
    return total


def _most_steps_that_fit(computed: list[int], have: list[int], steps: int, block_size: int, free: int) -> int:
    low, high = 0, steps  # need(low) fits, need(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if _blocks_needed(computed, have, middle, block_size) <= free:
            low = middle
        else:
            high = middle
    return low


def apply_segment(replica: SimReplica, segment: DecodeSegment) -> None:
    """Advance the scheduler's state over the segment's steps and record the tokens they produced."""
    kv, scheduler, router = replica.kv, replica.scheduler, replica.router
    steps = segment.steps
    ends = segment.ends
    first, last = ends[0], ends[steps - 1]
    times = ends[:steps] if replica.options.record_token_times else None
    dummies = [0] * steps
    block_size = kv.block_size
    tables = kv.tables
    progress = router.progress
    finishing: list[TrackedRequest] = []
    for tracked, left in zip(segment.tracked, segment.steps_left):
        request = tracked.request
        done = request.num_computed_tokens
        now_done = done + steps
        if now_done > len(tables[request.request_id]) * block_size and not kv.allocate_slots(request, steps):
            raise AssertionError(f"decode segment planned without the KV blocks for {request.request_id}")
        request.num_computed_tokens = now_done
        request.output_token_ids.extend(dummies)
        if now_done // block_size > done // block_size:
            kv.cache_blocks(request, now_done)
        record = tracked.record
        if times is not None:
            record.token_times_s.extend(times)
        if record.first_token_s is None:
            record.first_token_s = first
            router.first_byte(tracked.ticket, first)
        progress(tracked.ticket, steps)
        if left == steps:
            finishing.append(tracked)
    replica.count_steps(steps, last - segment.start)
    if finishing:
        scheduler.finish_requests([tracked.request.request_id for tracked in finishing],
                                  RequestStatus.FINISHED_LENGTH)
        for tracked in finishing:
            replica.complete(tracked, last)
