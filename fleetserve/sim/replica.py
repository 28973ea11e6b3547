"""A simulated replica: the engine's own Scheduler and KVCacheManager, stepped on a virtual clock.

Each step goes as in the engine's loop: the requests that arrived during the previous step are added, the
scheduler builds the batch, the step lasts as long as the performance model says, and at its end the
scheduler is updated with one sampled token per sampling request. Tokens are dummies: requests run with
ignore_eos, so only the trace's output length (max_tokens) or the context length ends them. A request
arriving mid-step joins the next step. Runs of pure decode steps are planned and applied on the scheduler
(`begin_decode_run`, fleetserve.engine.decode_run_start) and timed as segments (fleetserve.sim.segment),
with the same results.

With speculative decoding (`ReplicaConfig.speculative`), the engine's own `Speculation` chooses each
decoding request's drafts after every step, from placeholder drafts and the replica's performance model as
its step cost; the scheduler schedules them as extra decode rows, which the performance model prices (see
`shape_of`); at the step's end the acceptance model draws how many were accepted, and the scheduler emits
those and one more token. Decode runs are then stepped one by one, not planned as segments, since a
segment assumes one token per request per step.

A replica has a role (fleetserve.fleet.disaggregation): a prefill replica serves the prefills of requests
decoded elsewhere (max_tokens=1) and hands each finished one to the fleet (`handoffs`), which sends its KV
on; a decode replica also takes requests whose prompt was prefilled elsewhere (`import_prefilled`): their
first token is the client's at the KV's arrival, and at the next step the scheduler takes their blocks
(`Scheduler.add_prefilled_request`) and they wait for their first decode step, or, when the blocks do not
fit, compute their prompt here. Decode runs need no change for them: admitted, they decode like the others.

The replica also keeps the router's view of its load, a `fleetserve.fleet.replicas.Replica` fed the calls
the live proxy makes (begin when routed, first_byte, progress per token, finish).

Refusals carry the error kind a live benchmark records for the same answer from `fleetserve serve`:
http_status_400 for a request that can never run (context length, whole KV cache too small) and
http_status_429 when the replica's waiting queue is full.
"""
from __future__ import annotations

from fleetserve.engine.admission import Refusal, RequestRefused, admission_refusal
from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request
from fleetserve.engine.scheduler import Scheduler, SchedulerOutput
from fleetserve.engine.speculation import Speculation
from fleetserve.fleet.disaggregation import check_role
from fleetserve.fleet.replicas import Replica
from fleetserve.perf.model import PerfModel
from fleetserve.perf.step_shape import shape_of
from fleetserve.sim.acceptance import AcceptanceDraws
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.placeholder_drafts import PlaceholderDrafts
from fleetserve.sim.segment import Segment, plan_segment
from fleetserve.sim.tracked import TrackedRequest


class SimReplica:
    def __init__(self, replica_id: str, hardware_name: str, perf: PerfModel, config: ReplicaConfig,
                 model_max_len: int, options: SimOptions | None = None, weight: float = 1.0,
                 acceptance: AcceptanceDraws | None = None, role: str = "mixed") -> None:
        """`acceptance`: the draws shared by the fleet's replicas (so a trace's rates go to requests in the
        order they reach the fleet); by default this replica's own, from `config.spec_acceptance`."""
        capacity = perf.kv_capacity_tokens()
        num_blocks = capacity // config.block_size
        if num_blocks < 2:
            raise ValueError(f"replica {replica_id} ({perf.name}): a KV cache of {capacity} tokens holds "
                             f"{num_blocks} blocks of {config.block_size} tokens; a replica needs at least 2")
        self.replica_id = replica_id
        self.hardware_name = hardware_name
        self.role = check_role(role)
        self.perf = perf
        self.config = config
        self.options = options or SimOptions()
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler_config(model_max_len), self.kv, perf)
        self.router = Replica(replica_id, f"sim://{replica_id}", weight=weight, block_size=config.block_size,
                              healthy=True, pool=hardware_name, role=self.role)
        self.tracked: dict[str, TrackedRequest] = {}
        self.inbox: list[TrackedRequest] = []
        self.imports: dict[str, int] = {}  # request id -> prompt tokens prefilled elsewhere, for inbox requests
        self.handoffs: list[TrackedRequest] = []  # prefills done (or refused) for other replicas, for the fleet
        self.num_import_recomputes = 0  # imported requests whose blocks did not fit, so computed their prompt
        self.pending: SchedulerOutput | None = None
        self.segment: Segment | None = None
        self.step_start = 0.0
        self.busy_until: float | None = None  # end of the step or segment in progress; None when idle
        self.num_steps = 0
        self.num_full_steps = 0
        self.num_segments = 0
        self.busy_s = 0.0
        self.preemptions: list[tuple[float, str]] = []  # (step start, request id), in order
        self.speculation: Speculation | None = None
        self.acceptance: AcceptanceDraws | None = None
        if config.speculative is not None:
            model = config.spec_acceptance
            assert model is not None
            self.acceptance = acceptance or AcceptanceDraws(model)
            self.speculation = Speculation(config.speculative, perf,
                                           PlaceholderDrafts(model.draft_availability, model.seed))

    @property
    def max_model_len(self) -> int:
        return self.scheduler.config.max_model_len

    # --- arrivals ---------------------------------------------------------------------------------

    def submit(self, tracked: TrackedRequest, now: float) -> float | None:
        """Take a routed request at `now`; returns the replica's new wake-up time if it changed."""
        refusal = self._refusal(tracked.request)
        if refusal is not None:
            self._reject(tracked, now, refusal.error_kind, refusal.reason)
            return None
        self.inbox.append(tracked)
        self.tracked[tracked.request.request_id] = tracked
        if self.acceptance is not None and tracked.handoff is None:
            self.acceptance.arrive(tracked.request.request_id)
        return self._woken_by_arrival(now)

    def import_prefilled(self, tracked: TrackedRequest, num_prefilled: int, now: float) -> float | None:
        """Take at `now` a request whose first `num_prefilled` tokens' KV (its prompt) has just arrived from a
        prefill replica, with the first output token it sampled; the client has that token now. Returns the
        replica's new wake-up time if it changed."""
        request = tracked.request
        refusal = self._refusal(request)
        if refusal is not None:
            self._reject(tracked, now, refusal.error_kind, refusal.reason)
            return None
        record = tracked.record
        record.first_token_s = now
        if self.options.record_token_times:
            record.token_times_s.append(now)
        self.router.first_byte(tracked.ticket, now)
        self.router.progress(tracked.ticket, request.num_output_tokens)
        self.tracked[request.request_id] = tracked
        if request.num_output_tokens >= request.max_tokens:  # the prefill's token was the whole answer
            self.complete(tracked, now)
            return None
        self.inbox.append(tracked)
        self.imports[request.request_id] = num_prefilled
        if self.acceptance is not None:
            self.acceptance.arrive(request.request_id)
        return self._woken_by_arrival(now)

    def _woken_by_arrival(self, now: float) -> float | None:
        if self.busy_until is None:
            return self._start_step(now)
        if self.segment is not None and self.segment.cut_at(now):
            self.busy_until = self.segment.wake_time
            return self.busy_until
        return None

    def _refusal(self, request: Request) -> Refusal | None:
        return admission_refusal(request.num_prompt_tokens, request.max_tokens, self.max_model_len,
                                 len(self.scheduler.waiting) + len(self.inbox), self.config.max_queue)

    # --- stepping ---------------------------------------------------------------------------------

    @property
    def extending_segment(self) -> bool:
        """Whether the next wake only prices more steps of the segment in progress (nothing a policy sees
        changes)."""
        return self.segment is not None and not self.segment.complete

    def wake(self, now: float) -> float | None:
        """The step (or segment) in progress ends at `now`: apply it and start the next; returns its end,
        or None when the replica goes idle."""
        segment = self.segment
        if segment is not None:
            if not segment.complete:
                self.busy_until = segment.extend(self.perf)
                return self.busy_until
            self.segment = None
            self._apply_segment(segment)
        elif self.pending is not None:
            self._end_step(now)
        return self._start_step(now)

    def _start_step(self, now: float) -> float | None:
        if self.inbox:
            imports = self.imports
            for tracked in self.inbox:
                request = tracked.request
                try:
                    if imports and request.request_id in imports:
                        if self.scheduler.add_prefilled_request(request, imports.pop(request.request_id)) is None:
                            self.num_import_recomputes += 1
                    else:
                        self.scheduler.add_request(request)
                except RequestRefused as error:
                    self._reject(tracked, now, error.refusal.error_kind, error.refusal.message)
            self.inbox.clear()
        if self.options.skip_decodes and self.speculation is None:
            segment = plan_segment(self.scheduler, self.tracked, now)
            if segment is not None:
                self.segment = segment
                self.num_segments += 1
                self.busy_until = segment.extend(self.perf)
                return self.busy_until
        out = self.scheduler.schedule()
        for request in out.preempted:
            self.preemptions.append((now, request.request_id))
        if out.is_empty:
            self.busy_until = None
            return None
        self.pending = out
        self.step_start = now
        self.busy_until = now + self.perf.step_time(shape_of(out))
        return self.busy_until

    def _end_step(self, now: float) -> None:
        out, self.pending = self.pending, None
        assert out is not None
        outputs_before: dict[str, int] | None = None  # with speculation: a request may emit several tokens
        if self.speculation is None:
            sampled: dict[str, int | list[int]] = {item.request.request_id: 0 for item in out.scheduled
                                                   if item.samples}
        else:
            sampled, outputs_before = self._draw_verifications(out)
        finished = self.scheduler.update_from_output(out, sampled)
        record_times = self.options.record_token_times
        router = self.router
        for request_id in sampled:
            tracked = self.tracked[request_id]
            emitted = 1 if outputs_before is None else tracked.request.num_output_tokens - outputs_before[request_id]
            if emitted <= 0:
                continue
            record = tracked.record
            if record_times:
                if emitted == 1:
                    record.token_times_s.append(now)
                else:
                    record.token_times_s.extend([now] * emitted)
            if record.first_token_s is None:
                record.first_token_s = now
                router.first_byte(tracked.ticket, now)
            router.progress(tracked.ticket, emitted)
        for request in finished:
            self.complete(self.tracked[request.request_id], now)
        self.num_full_steps += 1
        self.count_steps(1, now - self.step_start)
        if self.speculation is not None:  # the next step's drafts, chosen after the update as the engine does
            self.speculation.propose(self.scheduler, self.max_model_len)

    def _draw_verifications(self, out: SchedulerOutput) -> tuple[dict[str, int | list[int]], dict[str, int]]:
        """The step's sampled tokens when it may verify drafts: for a verification, the accepted drafts (as the
        acceptance model draws) and one more token; and each sampling request's output count before it."""
        speculation, acceptance = self.speculation, self.acceptance
        assert speculation is not None and acceptance is not None
        sampled: dict[str, int | list[int]] = {}
        outputs_before: dict[str, int] = {}
        for item in out.scheduled:
            if not item.samples:
                continue
            request_id = item.request.request_id
            outputs_before[request_id] = item.request.num_output_tokens
            if item.drafts:
                accepted = acceptance.accepted(request_id, item.drafts)
                speculation.verified(request_id, item.drafts, accepted)
                sampled[request_id] = [0] * (accepted + 1)
            else:
                sampled[request_id] = 0
        return sampled, outputs_before

    def _apply_segment(self, segment: Segment) -> None:
        finished = segment.apply(self.scheduler, self.router, self.options.record_token_times)
        last = segment.ends[segment.steps - 1]
        self.count_steps(segment.steps, last - segment.start)
        for request in finished:
            self.complete(self.tracked[request.request_id], last)

    def count_steps(self, steps: int, busy_s: float) -> None:
        self.num_steps += steps
        self.busy_s += busy_s

    # --- endings ----------------------------------------------------------------------------------

    def complete(self, tracked: TrackedRequest, now: float) -> None:
        record = tracked.record
        record.end_s = now
        record.output_tokens = tracked.request.num_output_tokens
        self.router.finish(tracked.ticket)
        request_id = tracked.request.request_id
        del self.tracked[request_id]
        if tracked.handoff is not None:
            self.handoffs.append(tracked)
        elif self.speculation is not None:
            self._release_speculation(request_id)

    def _release_speculation(self, request_id: str) -> None:
        assert self.speculation is not None and self.acceptance is not None
        self.speculation.release(request_id)
        self.acceptance.release(request_id)

    def _reject(self, tracked: TrackedRequest, now: float, kind: str, message: str) -> None:
        record = tracked.record
        record.success = False
        record.error_kind = kind
        record.error = f"replica {self.replica_id}: {message}"
        record.end_s = now
        self.router.finish(tracked.ticket)
        self.tracked.pop(tracked.request.request_id, None)
        self.imports.pop(tracked.request.request_id, None)
        if tracked.handoff is not None:
            self.handoffs.append(tracked)
        elif self.speculation is not None:
            self._release_speculation(tracked.request.request_id)

    def stats(self) -> dict[str, object]:
        return {"replica": self.replica_id, "hardware": self.hardware_name, "perf_model": self.perf.name,
                **({"role": self.role} if self.role != "mixed" else {}),
                "kv_blocks": self.kv.num_blocks, "steps": self.num_steps, "full_steps": self.num_full_steps,
                "decode_segments": self.num_segments, "preemptions": self.scheduler.num_preemptions,
                "busy_s": self.busy_s, "prefix_cache_hit_tokens": self.kv.prefix_cache_hits,
                "prefix_cache_query_tokens": self.kv.prefix_cache_queries,
                **({"speculation": self.speculation.stats.as_dict()} if self.speculation is not None else {})}
