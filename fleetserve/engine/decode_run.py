"""A run of decode steps, planned from the scheduler's state and applied at once.

While no request arrives, none finishes, none is waiting to be admitted and the KV cache has blocks to
spare, `Scheduler.schedule` builds the same kind of step over and over: one token for each decoding request,
in running order, and the rest of the token budget for the prefilling request at the end of the running
list (the newest: at most one request is part-way through its prompt when prefill chunks are not capped
per request). A DecodeRun is such a run. It stops where the prefill completes (its last chunk samples the
first token) or a request reaches its length stop (`Request.tokens_before_length_stop`), and within the
free KV blocks. Applying its first `steps` steps does to the requests and the KVCacheManager what those
steps would: as many blocks for each request (all taken before any release, as within the steps),
computed-token counts, output tokens and prefix-cache entries; the scheduler then ends the finishing
requests in running order, so everything after it is the same as stepping token by token. Only the order
of the allocations differs (each request's blocks at once rather than step by step across requests), so
block ids may differ, and the KV-event feed groups its entries per request, to the same effect.

`begin_decode_run` (fleetserve.engine.decode_run_start) plans a run, first beginning the step that admits a
waiting request when that step can open one; `apply_decode_run` applies it.

A run is planned only while no sampled token can end a request (`Request.stops_only_at_length`: no stop
tokens, end of sequence ignored), as in the simulator: its output tokens are placeholders (0), which a
caller that samples real tokens writes over.
"""
from __future__ import annotations

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request

NEVER = 1 << 62


class TrailingPrefill:
    """The newest running request, computing `chunks[i]` prompt tokens at step i from `computed` on. With
    `completes`, the last chunk reaches the end of its known tokens, so that step samples a token, and from
    the next step on it decodes like the others; `steps_left` counts the steps until it finishes (NEVER if
    not in reach)."""
    __slots__ = ("chunks", "completes", "computed", "request", "steps_left")

    def __init__(self, request: Request, computed: int, chunks: list[int], completes: bool,
                 steps_left: int) -> None:
        self.request = request
        self.computed = computed
        self.chunks = chunks
        self.completes = completes
        self.steps_left = steps_left

    def tokens_through(self, steps: int) -> int:
        """Tokens it has computed after `steps` steps of the run."""
        prefill_steps = len(self.chunks)
        if steps <= prefill_steps:
            return sum(self.chunks[:steps])
        return sum(self.chunks) + steps - prefill_steps

    def tokens_sampled(self, steps: int) -> int:
        """Tokens it has sampled after `steps` steps of the run: from the step of its last chunk on, one a step."""
        prefill_steps = len(self.chunks)
        if steps < prefill_steps or not self.completes:
            return 0
        return steps - prefill_steps + 1


class DecodeRun:
    """`steps` steps in which each request of `decoding` (in running order) decodes a token; `steps_left[i]`
    counts the steps until `decoding[i]` finishes. `first_context` is the decoding requests' context tokens
    in the first step. `prefill`, if any, is the newest running request, past its prompt decoding too."""
    __slots__ = ("decoding", "first_context", "prefill", "steps", "steps_left")

    def __init__(self, decoding: list[Request], steps_left: list[int], steps: int, first_context: int,
                 prefill: TrailingPrefill | None) -> None:
        self.decoding = decoding
        self.steps_left = steps_left
        self.steps = steps
        self.first_context = first_context
        self.prefill = prefill


def plan_decode_run(running: list[Request], kv: KVCacheManager, budget: int, prefill_cap: int,
                    max_model_len: int, reserved_blocks: int = 0) -> DecodeRun | None:
    """The run the scheduler would step through from here, with nothing waiting; None when its next step
    would be of another kind (a decode left out of the budget, a request that is neither decoding nor the
    newest, or no KV block for the first step), or when a sampled token could end a request (its end is
    then not known in advance). The run leaves `reserved_blocks` free blocks untouched."""
    if not running:
        return None
    newest = running[-1]
    if not newest.stops_only_at_length:
        return None
    newest_left = len(newest.prompt_token_ids) + len(newest.output_token_ids) - newest.num_computed_tokens
    decoding = running if newest_left == 1 else running[:-1]
    decodes = len(decoding)
    if decodes > budget or (newest_left > 1 and decodes == budget):
        return None
    # Plain locals and inlined arithmetic: the simulator plans a run for most steps of every replica.
    steps = NEVER
    context = 0
    computed: list[int] = []
    steps_left: list[int] = []
    for request in decoding:
        done = request.num_computed_tokens
        if (len(request.prompt_token_ids) + len(request.output_token_ids) - done != 1
                or not request.stops_only_at_length):
            return None
        left = request.tokens_before_length_stop(max_model_len)
        if left < 1:
            left = 1
        if left < steps:
            steps = left
        context += done
        computed.append(done)
        steps_left.append(left)
    held = kv.held_block_counts(running)
    prefill = None
    if newest_left > 1:
        prefill = _trailing_prefill(newest, newest_left, budget - decodes, prefill_cap, steps, max_model_len)
        # Past its prompt it decodes with the others, if the budget has room for one more decode.
        decode_after = prefill.completes and decodes + 1 <= budget
        steps = min(steps, prefill.steps_left) if decode_after else len(prefill.chunks)
    steps = _steps_that_fit(kv.num_free_blocks - reserved_blocks, kv.block_size, computed, held, steps, prefill)
    if steps == 0:
        return None
    return DecodeRun(decoding, steps_left, steps, context + decodes, prefill)


def _trailing_prefill(request: Request, left: int, room: int, cap: int, max_steps: int,
                      max_model_len: int) -> TrailingPrefill:
    if cap > 0:
        room = min(room, cap)
    chunks: list[int] = []
    while left > 0 and len(chunks) < max_steps:
        chunk = min(left, room)
        chunks.append(chunk)
        left -= chunk
    completes = left == 0
    steps_left = NEVER
    if completes:  # its first sampled token, then one a step until its length stop
        steps_left = len(chunks) + max(request.tokens_before_length_stop(max_model_len) - 1, 0)
    return TrailingPrefill(request, request.num_computed_tokens, chunks, completes, steps_left)


def _steps_that_fit(free: int, block_size: int, computed: list[int], held: list[int], steps: int,
                    prefill: TrailingPrefill | None) -> int:
    """The most steps (up to `steps`) whose new KV blocks `free` blocks cover. `held` has the blocks of
    each decoding request, in order, then the prefilling one's."""
    prefill_held = held[-1] if prefill is not None else 0

    def needed(count: int) -> int:
        total = 0
        for done, have in zip(computed, held):
            extra = (done + count + block_size - 1) // block_size - have
            if extra > 0:
                total += extra
        if prefill is not None:
            tokens = prefill.computed + prefill.tokens_through(count)
            total += max(0, (tokens + block_size - 1) // block_size - prefill_held)
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


def advance_decode_run(run: DecodeRun, steps: int, kv: KVCacheManager) -> list[Request]:
    """Compute the run's first `steps` steps (at most `run.steps`): blocks, computed tokens, placeholder output
    tokens and prefix-cache entries; returns the requests that reach their length stop, in running order
    (the caller ends them)."""
    block_size = kv.block_size
    allocate_slots, cache_blocks = kv.allocate_slots, kv.cache_blocks
    placeholders = [0] * steps
    finishing: list[Request] = []
    for request, left in zip(run.decoding, run.steps_left):
        done = request.num_computed_tokens
        now_done = done + steps
        # A decoding request holds the blocks its computed tokens fill, so it needs more only when the
        # run's tokens cross into a new block, and publishes only when they fill one.
        if ((now_done + block_size - 1) // block_size > (done + block_size - 1) // block_size
                and not allocate_slots(request, steps)):
            raise AssertionError(f"decode run planned without the KV blocks for {request.request_id}")
        request.num_computed_tokens = now_done
        request.output_token_ids += placeholders  # first: the blocks to publish may hold them
        if now_done // block_size > done // block_size:
            cache_blocks(request, now_done)
        if left == steps:
            finishing.append(request)
    prefill = run.prefill
    if prefill is not None:
        request = prefill.request
        tokens = prefill.tokens_through(steps)
        if not allocate_slots(request, tokens):
            raise AssertionError(f"decode run planned without the KV blocks for {request.request_id}")
        request.num_computed_tokens += tokens
        sampled = prefill.tokens_sampled(steps)
        if sampled:
            request.output_token_ids.extend([0] * sampled)
        cache_blocks(request, request.num_computed_tokens)
        if steps == prefill.steps_left:
            finishing.append(request)
    return finishing
