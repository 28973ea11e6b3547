"""One token budget per step, shared by decodes and chunked prefills, in the manner of vLLM V1.

Each request has a count of computed tokens that catches up with its token count; there are no separate
prefill and decode phases. Running requests are served first, oldest first; when blocks run out the
newest running request is preempted (its blocks freed, to be recomputed later) and goes back to the front
of the queue, so the oldest requests always progress and none starves. Plain Python, no torch, no clock.

A decoding request with drafted tokens (speculative decoding, `Request.spec_token_ids`) is scheduled for its
known token and its drafts together, under the same budget; `update_from_output` keeps the accepted ones and
rolls its computed tokens back past the rest.

With `max_step_ms`, the step's token budget is what a step-cost model predicts fits in that time beside the
step's decodes (fleetserve.engine.step_budget): decodes keep their pace while prompts go in smaller chunks.

Who goes first is the scheduling policy's (fleetserve.engine.scheduling_policy): FCFS or priority, and the
online and offline service classes. The running list keeps online requests before offline ones, so a step
serves the running online requests, then admits waiting online ones, then gives the offline ones what the
policy leaves; the newest offline request is preempted first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from fleetserve.engine.admission import RequestRefused, kv_cache_refusal
from fleetserve.engine.kv_cache import KVBlock, KVCacheManager
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.scheduling_policy import SchedulingPolicy
from fleetserve.engine.step_budget import StepCost, bounded_budget, check_max_step_ms
from fleetserve.engine.verification import accept_verified
from fleetserve.engine.waiting_imports import WaitingImports
from fleetserve.engine.waiting_queue import WaitingQueue, remove_identical


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048
    long_prefill_token_threshold: int = 0
    policy: SchedulingPolicy = field(default_factory=SchedulingPolicy)
    max_step_ms: float | None = None  # a step's predicted time bound; None: the token budget alone bounds it

    def __post_init__(self) -> None:
        check_max_step_ms(self.max_step_ms)


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_tokens: int
    start: int  # index of the first token scheduled (== num_computed_tokens when scheduled)
    drafts: int = 0  # of num_tokens, how many are drafted tokens to verify (after the one known token)

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the request's known tokens, so a new token is sampled."""
        return self.start + self.num_tokens >= self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    num_batched_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager, step_cost: StepCost | None = None) -> None:
        if config.max_step_ms is not None and step_cost is None:
            raise ValueError(f"max_step_ms={config.max_step_ms} needs a step-cost model to predict step times; "
                             f"pass step_cost")
        self.config = config
        self.kv_cache = kv_cache
        self.step_cost = step_cost
        self.policy = config.policy
        self.waiting = WaitingQueue(config.policy)
        self.running: list[Request] = []  # online requests first, then offline ones; each part in admission order
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.imports = WaitingImports(kv_cache)
        self.num_offline = 0  # offline requests waiting or running
        self.offline_kv_reserve = config.policy.offline_kv_reserve(kv_cache.num_blocks)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        # The last sampled token is never fed back, so it needs no KV slot.
        tokens = min(request.num_prompt_tokens + request.max_tokens - 1, self.config.max_model_len)
        refusal = kv_cache_refusal(request.num_prompt_tokens, request.max_tokens,
                                   self.kv_cache.blocks_needed(tokens), self.kv_cache.num_blocks)
        if refusal is not None:
            raise RequestRefused(refusal)
        request.status = RequestStatus.WAITING
        self.waiting.add(request)
        self.requests[request.request_id] = request
        if request.offline:
            self.num_offline += 1

    def add_prefilled_request(self, request: Request, num_prefilled: int) -> int | None:
        """Add a request whose first `num_prefilled` tokens were computed elsewhere (disaggregated prefill:
        its KV arrives from a prefill replica, and its first output token with it). Its blocks are taken now
        (fleetserve.engine.kv_cache.KVCacheManager.import_request) and it waits for its first decode step.
        Returns the leading tokens the prefix cache already held; None when the blocks do not fit, and the
        request then waits as any other and computes its whole prompt here."""
        self.add_request(request)
        return self.imports.add(request, num_prefilled)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        scheduled = out.scheduled
        config = self.config
        total = chunk_room = config.max_num_batched_tokens  # chunk_room: tokens left for prompt chunks
        if config.max_step_ms is not None:
            assert self.step_cost is not None
            total, chunk_room = bounded_budget(self.running, self.step_cost, config.max_step_ms,
                                               config.max_num_batched_tokens, self.kv_cache.block_size)
        budget = total
        cap = config.long_prefill_token_threshold
        allocate_slots = self.kv_cache.allocate_slots
        running = self.running
        waiting = self.waiting
        if waiting and (self.num_offline or self.policy.by_priority):
            self._preempt_for_waiting(out)

        # Plain locals and inlined arithmetic: the simulator runs this loop for every step of 64 replicas.
        stalled = False  # a running request could not get its blocks: nothing more is started this step
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            if request.offline:
                break
            computed = request.num_computed_tokens
            left = num_new = len(request.prompt_token_ids) + len(request.output_token_ids) - computed
            if left == 1 and request.spec_token_ids:
                num_new += len(request.spec_token_ids)
            if num_new > budget:
                num_new = budget
            if 0 < cap < num_new:
                num_new = cap
            if num_new > chunk_room and left > 1:
                num_new = chunk_room
            if num_new <= 0:
                i += 1
                continue
            while not allocate_slots(request, num_new):
                victim_index = self.victim_index()
                victim = running.pop(victim_index)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    stalled = True
                    break
                if victim_index < i:
                    tokens, chunk = _unschedule(scheduled, victim)
                    budget += tokens
                    chunk_room += chunk
                    i -= 1
            else:
                drafts = num_new - left if num_new > left else 0
                scheduled.append(ScheduledRequest(request, num_new, computed, drafts))
                budget -= num_new
                if left > 1:
                    chunk_room -= num_new
                i += 1
                continue
            break

        if not stalled:
            while waiting.num_online and budget > 0 and chunk_room > 0 and len(running) < config.max_num_seqs:
                admitted = self.admit_next_waiting(min(budget, chunk_room), i)
                if admitted is None:
                    break
                scheduled.append(admitted)
                budget -= admitted.num_tokens
                chunk_room -= admitted.num_tokens
                i += 1
            if self.num_offline and budget > 0:
                online_present = i > 0 or waiting.num_online > 0
                room = min(budget, self.policy.offline_token_room(total, total - budget, online_present))
                budget -= room - self._schedule_offline(out, i, room, chunk_room)

        out.num_batched_tokens = total - budget
        return out

    def _schedule_offline(self, out: SchedulerOutput, first: int, room: int, chunk_room: int) -> int:
        """Serve the running offline requests (from index `first`), then admit waiting offline ones, within
        `room` tokens (`chunk_room` of them for prompt chunks) and the blocks the online reserve leaves;
        returns the tokens left."""
        scheduled = out.scheduled
        running = self.running
        cap = self.config.long_prefill_token_threshold
        i = first
        while i < len(running) and room > 0:
            request = running[i]
            computed = request.num_computed_tokens
            left = request.num_tokens - computed
            num_new = left + len(request.spec_token_ids) if left == 1 else left
            if num_new > room:
                num_new = room
            if 0 < cap < num_new:
                num_new = cap
            if num_new > chunk_room and left > 1:
                num_new = chunk_room
            if num_new <= 0:
                i += 1
                continue
            while not self._allocate_offline(request, num_new):
                victim_index = self.victim_index()
                victim = running.pop(victim_index)
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    return room
                if victim_index < i:
                    tokens, chunk = _unschedule(scheduled, victim)
                    room += tokens
                    chunk_room += chunk
                    i -= 1
            scheduled.append(ScheduledRequest(request, num_new, computed, num_new - left if num_new > left else 0))
            room -= num_new
            if left > 1:
                chunk_room -= num_new
            i += 1
        while (self.waiting and not self.waiting.num_online and room > 0 and chunk_room > 0
               and len(running) < self.config.max_num_seqs):
            admitted = self.admit_next_waiting(min(room, chunk_room), len(running))
            if admitted is None:
                break
            scheduled.append(admitted)
            room -= admitted.num_tokens
            chunk_room -= admitted.num_tokens
        return room

    def _allocate_offline(self, request: Request, num_new: int, computed_blocks: Sequence[KVBlock] = ()) -> bool:
        kv = self.kv_cache
        if kv.num_free_blocks - kv.free_blocks_taken(request, num_new, computed_blocks) < self.offline_kv_reserve:
            return False
        return kv.allocate_slots(request, num_new, computed_blocks)

    def victim_index(self) -> int:
        """Where the running request to preempt first is: the newest of the offline ones if any run, else of
        all; under the priority policy, the one of those with the largest (priority, arrival)."""
        running = self.running
        last = len(running) - 1
        if not self.policy.by_priority:
            return last
        offline = running[last].offline
        best, best_key = last, (running[last].priority, running[last].arrival_time)
        for index in range(last - 1, -1, -1):
            request = running[index]
            if request.offline != offline:
                break
            key = (request.priority, request.arrival_time)
            if key > best_key:
                best, best_key = index, key
        return best

    def _preempt_for_waiting(self, out: SchedulerOutput) -> None:
        """Make room for the first waiting request when it cannot be admitted (no free sequence slot, or not
        the blocks for a first chunk) and it outranks a running request: that one is preempted."""
        running, kv, policy = self.running, self.kv_cache, self.policy
        first_chunk = self.config.max_num_batched_tokens
        while running:
            candidate = self.waiting.first()
            reserve = self.offline_kv_reserve if candidate.offline else 0
            if (len(running) < self.config.max_num_seqs
                    and kv.blocks_needed(min(candidate.num_tokens, first_chunk)) + reserve <= kv.num_free_blocks):
                return
            victim_index = self.victim_index()
            victim = running[victim_index]
            if not policy.outranks(candidate, victim):
                return
            del running[victim_index]
            self._preempt(victim)
            out.preempted.append(victim)

    def admit_next_waiting(self, budget: int, position: int | None = None) -> ScheduledRequest | None:
        """Move the first waiting request into the running list (at `position`, by default the end) with its
        first chunk (at most `budget` tokens, after its cached prefix); None, with the request left waiting,
        when its blocks do not fit (for an offline request: without using the online reserve)."""
        request = self.waiting.first()
        computed_blocks: Sequence[KVBlock]
        if request.num_computed_tokens:  # prefilled elsewhere: it holds the blocks of those tokens already
            computed_blocks, num_cached = (), request.num_computed_tokens
        else:
            computed_blocks, num_cached = self.kv_cache.get_computed_blocks(request)
        num_new = self._cap_prefill(min(request.num_tokens - num_cached, budget))
        allocate = self._allocate_offline if request.offline else self.kv_cache.allocate_slots
        while not allocate(request, num_new, computed_blocks):
            if not self.imports.drop_newest(request):
                return None
        self.waiting.pop_first()
        if num_cached and self.imports:
            self.imports.discard(request)
        request.num_computed_tokens = num_cached
        if request.num_output_tokens == 0:
            request.num_cached_prompt_tokens = num_cached
        request.status = RequestStatus.RUNNING
        if position is None or position >= len(self.running):
            self.running.append(request)
        else:
            self.running.insert(position, request)
        return ScheduledRequest(request, num_new, num_cached)

    def _cap_prefill(self, num_new: int) -> int:
        threshold = self.config.long_prefill_token_threshold
        return min(num_new, threshold) if threshold > 0 else num_new

    def _preempt(self, request: Request) -> None:
        self.kv_cache.free(request)
        request.spec_token_ids = []
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.put_back(request)

    def update_from_output(self, out: SchedulerOutput, sampled: Mapping[str, int | list[int]]) -> list[Request]:
        """Advance computed-token counts, append sampled tokens, and finish requests; returns the finished.
        A step that verified drafts gives a list for its request: the accepted drafts, then the token sampled
        after them."""
        finished: list[Request] = []
        cache_blocks = self.kv_cache.cache_blocks
        max_model_len = self.config.max_model_len
        running, waiting = RequestStatus.RUNNING, RequestStatus.WAITING
        for item in out.scheduled:
            request = item.request
            status = request.status
            if status is not running and status is not waiting:  # finished or preempted since scheduled
                continue
            token = sampled.get(request.request_id)
            if item.drafts:
                tokens = [] if token is None else token if isinstance(token, list) else [token]
                if accept_verified(request, item.start, tokens, self.kv_cache, max_model_len):
                    self.remove(request)
                    finished.append(request)
                continue
            computed = item.start + item.num_tokens
            request.num_computed_tokens = computed
            cache_blocks(request, computed)
            if token is None:
                continue
            num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
            if computed < num_tokens:  # a prompt chunk short of the end samples nothing
                continue
            request.output_token_ids.append(token if isinstance(token, int) else token[0])
            if request.check_stop_after_token(max_model_len):
                self.remove(request)
                finished.append(request)
        return finished

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> list[Request]:
        """End requests from outside the step (abort, or a stop string found by the detokenizer)."""
        ended: list[Request] = []
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is None or request.is_finished:
                continue
            request.status = status
            self.remove(request)
            ended.append(request)
        return ended

    def remove(self, request: Request) -> None:
        if (remove_identical(self.running, request) or self.waiting.remove(request)) and request.offline:
            self.num_offline -= 1
        if self.imports:
            self.imports.discard(request)
        self.kv_cache.free(request)
        self.requests.pop(request.request_id, None)


def _unschedule(scheduled: list[ScheduledRequest], request: Request) -> tuple[int, int]:
    """Take a preempted request's entry out of the step being built; returns the tokens it had, and the same
    again if they were a prompt chunk (else 0)."""
    for index, item in enumerate(scheduled):
        if item.request is request:
            del scheduled[index]
            return item.num_tokens, item.num_tokens if request.num_tokens - item.start > 1 else 0
    return 0, 0
