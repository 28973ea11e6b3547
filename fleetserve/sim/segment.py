"""Step skipping: a run of steps in which every running request but the newest decodes one token, and the
newest may be prefilling its prompt chunk by chunk, advanced at once.

While no request arrives, none finishes, none is waiting to be admitted and the KV cache has blocks to
spare, the scheduler builds the same kind of step over and over: one token for each decoding request, in
running order, and the rest of the token budget for the prefilling request at the end of the running list
(the newest: at most one request is part-way through its prompt when prefill chunks are not capped
per request). A segment is such a run, planned from the scheduler's state when it begins and ended early
(after the step in progress) when a request arrives. It stops where the prefill completes (its last
chunk samples the first token) or a request finishes. Applying it does to the Scheduler and
KVCacheManager what those steps would: the same block allocations (all before any release, as within the
steps), computed-token counts, outputs and prefix-cache entries, and the finishing requests ended in
running order, so everything after it is the same as stepping token by token.

A segment may also begin with the step that admits a request: when exactly one is waiting, every running
request decodes and the blocks surely fit, that step is begun as `Scheduler.schedule` begins it (the
decodes' blocks, then `Scheduler.admit_next_waiting`), and the admitted request is the segment's
trailing prefill from its first chunk on. A segment is refused, and the step simulated in full, when a
step would do anything else: admit a request otherwise (two waiting, a request part-way through its
prompt, or the KV cache near full), leave a decode out of the batch (more decodes than the token budget),
or run out of KV blocks within one step (the scheduler preempts).

Pure decode step times are computed a chunk at a time, `FIRST_CHUNK_STEPS` first and then doubling up to
`MAX_CHUNK_STEPS`: the replica wakes at the end of each chunk only to compute the next, so a segment cut
short by an arrival (most are, after a few steps) does not pay for steps it never ran, and a long one
wakes only a few times.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.scheduler import Scheduler
from fleetserve.perf.step_shape import mixed_shape
from fleetserve.sim.step_times import decode_step_ends
from fleetserve.sim.tracked import TrackedRequest

if TYPE_CHECKING:
    from fleetserve.sim.replica import SimReplica

FIRST_CHUNK_STEPS = 8
MAX_CHUNK_STEPS = 512
NEVER = 1 << 62


class TrailingPrefill:
    """The newest running request, computing `chunks[i]` prompt tokens at step i. With `completes`, the last
    chunk reaches the end of its known tokens, so that step samples a token, and from the next step on it
    decodes like the others; `steps_left` counts the steps until it finishes (NEVER if not in reach)."""
    __slots__ = ("tracked", "computed", "chunks", "completes", "steps_left")

    def __init__(self, tracked: TrackedRequest, computed: int, chunks: list[int], completes: bool,
                 steps_left: int) -> None:
        self.tracked = tracked
        self.computed = computed
        self.chunks = chunks
        self.completes = completes
        self.steps_left = steps_left

    def tokens_through(self, steps: int) -> int:
        """Tokens it has computed after `steps` steps of the segment."""
        prefill_steps = len(self.chunks)
        if steps <= prefill_steps:
            return sum(self.chunks[:steps])
        return sum(self.chunks) + steps - prefill_steps


class Segment:
    __slots__ = ("start", "tracked", "steps_left", "steps", "ends", "first_context", "prefill")

    def __init__(self, start: float, tracked: list[TrackedRequest], steps_left: list[int], steps: int,
                 first_context: int, prefill: TrailingPrefill | None) -> None:
        self.start = start
        self.tracked = tracked  # the decoding requests, in running order
        self.steps_left = steps_left  # per decoding request: steps until it finishes
        self.steps = steps  # steps to apply
        self.first_context = first_context  # the decoding requests' context tokens in the first step
        self.prefill = prefill
        self.ends: list[float] = []  # end time of each step computed so far

    def extend(self, replica: SimReplica) -> float:
        """Compute the next step end times; returns the time to wake up at."""
        prefill = self.prefill
        done = len(self.ends)
        if prefill is not None and done < len(prefill.chunks):
            self.ends = self._prefill_step_ends(replica)
            return self.ends[-1]
        decodes = len(self.tracked)
        first_context = self.first_context + done * decodes
        if prefill is not None:  # past its prompt, the newest request decodes too
            first_context += prefill.computed + prefill.tokens_through(done) + 1
            decodes += 1
        count = min(max(FIRST_CHUNK_STEPS, min(done, MAX_CHUNK_STEPS)), self.steps - done)
        start = self.ends[-1] if self.ends else self.start
        self.ends.extend(decode_step_ends(replica.perf, start, decodes, first_context, count))
        return self.ends[-1]

    def _prefill_step_ends(self, replica: SimReplica) -> list[float]:
        prefill = self.prefill
        assert prefill is not None
        decodes = len(self.tracked)
        step_time = replica.perf.step_time
        now, cached, ends = self.start, prefill.computed, []
        for step, chunk in enumerate(prefill.chunks[:self.steps]):
            now += step_time(mixed_shape(chunk, cached, decodes, self.first_context + step * decodes))
            cached += chunk
            ends.append(now)
        return ends

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


def plan_segment(replica: SimReplica, now: float) -> Segment | None:
    scheduler, kv = replica.scheduler, replica.kv
    config = scheduler.config
    if scheduler.waiting and len(scheduler.running) < config.max_num_seqs and not _begin_admission_step(
            scheduler, kv):
        return None
    running = scheduler.running
    n = len(running)
    if n == 0:
        return None
    budget = config.max_num_batched_tokens
    newest = running[-1]
    newest_left = len(newest.prompt_token_ids) + len(newest.output_token_ids) - newest.num_computed_tokens
    decoding = running if newest_left == 1 else running[:-1]
    decodes = len(decoding)
    if decodes > budget or (newest_left > 1 and decodes == budget):
        return None
    max_len = config.max_model_len
    steps = NEVER
    context = 0
    computed: list[int] = []
    steps_left: list[int] = []
    for request in decoding:
        done = request.num_computed_tokens
        outputs = len(request.output_token_ids)
        total = len(request.prompt_token_ids) + outputs
        if total - done != 1:
            return None
        left = min(request.max_tokens - outputs, max_len - total)
        if left < 1:
            left = 1
        if left < steps:
            steps = left
        context += done
        computed.append(done)
        steps_left.append(left)
    tables = kv.tables
    have = [len(tables[request.request_id]) for request in decoding]
    by_id = replica.tracked
    prefill = None
    if newest_left > 1:
        prefill = _trailing_prefill(by_id[newest.request_id], newest_left, budget - decodes,
                                    config.long_prefill_token_threshold, steps, max_len)
        # Past its prompt it decodes with the others, if the budget has room for one more decode.
        decode_after = prefill.completes and decodes + 1 <= budget
        steps = min(steps, prefill.steps_left) if decode_after else len(prefill.chunks)
    steps = _steps_that_fit(kv, computed, have, steps, prefill, newest)
    if steps == 0:
        return None
    return Segment(now, [by_id[request.request_id] for request in decoding], steps_left, steps,
                         context + decodes, prefill)


def _begin_admission_step(scheduler: Scheduler, kv: KVCacheManager) -> bool:
    """Begin the step that admits the one waiting request as `Scheduler.schedule` begins it (each running
    request's block for its decode token, then the admission), so that the step can open a segment, the
    admitted request its trailing prefill. Only when that step is this simple: one request waiting, every
    running request decoding, and room in the token budget and for sure in the KV cache; otherwise False,
    with nothing changed, and the step is simulated in full. Should the segment be refused after all, the
    full step does the same: its block allocations are already there, and the request is running."""
    waiting, running, config = scheduler.waiting, scheduler.running, scheduler.config
    decodes = len(running)
    budget = config.max_num_batched_tokens
    if len(waiting) != 1 or decodes >= budget:
        return False
    block_size = kv.block_size
    tables = kv.tables
    crossing: list[Request] = []
    for request in running:
        done = request.num_computed_tokens
        if len(request.prompt_token_ids) + len(request.output_token_ids) - done != 1:
            return False
        if (done + block_size) // block_size > len(tables[request.request_id]):
            crossing.append(request)
    # The admission needs at most a block per token of the request (fewer with a prefix hit).
    if len(crossing) + kv.blocks_needed(waiting[0].num_tokens) > kv.num_free_blocks:
        return False
    for request in crossing:
        kv.allocate_slots(request, 1)
    if scheduler.admit_next_waiting(budget - decodes) is None:
        raise AssertionError(f"request {waiting[0].request_id} was not admitted though its blocks fit")
    return True


def _trailing_prefill(tracked: TrackedRequest, left: int, room: int, cap: int, max_steps: int,
                      max_len: int) -> TrailingPrefill:
    request = tracked.request
    if cap > 0:
        room = min(room, cap)
    chunks: list[int] = []
    while left > 0 and len(chunks) < max_steps:
        chunk = min(left, room)
        chunks.append(chunk)
        left -= chunk
    completes = left == 0
    steps_left = NEVER
    if completes:  # its first sampled token, then one a step, until max_tokens or the context length
        outputs = len(request.output_token_ids) + 1
        total = len(request.prompt_token_ids) + outputs
        after = min(request.max_tokens - outputs, max_len - total)
        steps_left = len(chunks) + max(after, 0)
    return TrailingPrefill(tracked, request.num_computed_tokens, chunks, completes, steps_left)


def _steps_that_fit(kv, computed: list[int], have: list[int], steps: int, prefill: TrailingPrefill | None,
                    newest) -> int:
    """The most steps (up to `steps`) whose new KV blocks the free blocks cover."""
    free = kv.num_free_blocks
    block_size = kv.block_size
    prefill_have = len(kv.tables[newest.request_id]) if prefill is not None else 0

    def needed(count: int) -> int:
        total = 0
        for done, held in zip(computed, have):
            extra = (done + count + block_size - 1) // block_size - held
            if extra > 0:
                total += extra
        if prefill is not None:
            tokens = prefill.computed + prefill.tokens_through(count)
            total += max(0, (tokens + block_size - 1) // block_size - prefill_have)
        return total

    if needed(steps) <= free:
        return steps
    low, high = 0, steps  # needed(low) fits, needed(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if needed(middle) <= free:
            low = middle
        else:
            high = middle
    return low


def apply_segment(replica: SimReplica, segment: Segment) -> None:
    """Advance the scheduler's state over the segment's steps and record the tokens they produced."""
    kv, scheduler, router = replica.kv, replica.scheduler, replica.router
    steps = segment.steps
    ends = segment.ends
    first, last = ends[0], ends[steps - 1]
    times = ends[:steps] if replica.options.record_token_times else None
    dummies = [0] * steps
    block_size = kv.block_size
    allocate_slots, cache_blocks = kv.allocate_slots, kv.cache_blocks
    progress = router.progress
    finishing: list[TrackedRequest] = []
    for tracked, left in zip(segment.tracked, segment.steps_left):
        request = tracked.request
        done = request.num_computed_tokens
        now_done = done + steps
        # A decoding request holds the blocks its computed tokens fill, so it needs more only when the
        # segment's tokens cross into a new block, and publishes only when they fill one.
        if ((now_done + block_size - 1) // block_size > (done + block_size - 1) // block_size
                and not allocate_slots(request, steps)):
            raise AssertionError(f"segment planned without the KV blocks for {request.request_id}")
        request.num_computed_tokens = now_done
        if now_done // block_size > done // block_size:
            cache_blocks(request, now_done)
        request.output_token_ids += dummies
        record = tracked.record
        if times is not None:
            record.token_times_s += times
        if record.first_token_s is None:
            record.first_token_s = first
            router.first_byte(tracked.ticket, first)
        progress(tracked.ticket, steps)
        if left == steps:
            finishing.append(tracked)
    if segment.prefill is not None and _apply_prefill(replica, segment.prefill, steps, ends):
        finishing.append(segment.prefill.tracked)
    replica.count_steps(steps, last - segment.start)
    if finishing:
        scheduler.finish_requests([tracked.request.request_id for tracked in finishing],
                                  RequestStatus.FINISHED_LENGTH)
        for tracked in finishing:
            replica.complete(tracked, last)


def _apply_prefill(replica: SimReplica, prefill: TrailingPrefill, steps: int, ends: list[float]) -> bool:
    """Compute the prefill's chunks (and decodes past them) of the applied steps; True if it finishes."""
    kv = replica.kv
    tracked = prefill.tracked
    request = tracked.request
    tokens = prefill.tokens_through(steps)
    if not kv.allocate_slots(request, tokens):
        raise AssertionError(f"segment planned without the KV blocks for {request.request_id}")
    request.num_computed_tokens += tokens
    kv.cache_blocks(request, request.num_computed_tokens)
    prefill_steps = len(prefill.chunks)
    if steps < prefill_steps or not prefill.completes:
        return False
    sampled = steps - prefill_steps + 1
    request.output_token_ids.extend([0] * sampled)
    record = tracked.record
    if replica.options.record_token_times:
        record.token_times_s.extend(ends[prefill_steps - 1:steps])
    if record.first_token_s is None:
        record.first_token_s = ends[prefill_steps - 1]
        replica.router.first_byte(tracked.ticket, record.first_token_s)
    replica.router.progress(tracked.ticket, sampled)
    return steps == prefill.steps_left
