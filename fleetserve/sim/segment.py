"""Step skipping: a run of decode steps (`fleetserve.engine.decode_run`, planned and applied by the
engine's Scheduler) timed as one segment of the replica's clock.

The scheduler plans the run from its state when the segment begins; the segment prices its steps, is ended
early (after the step in progress) when a request arrives, and at its end has the scheduler apply the steps
it ran, then records each request's tokens, first token and the router's progress as stepping would have.

Pure decode step times are computed a chunk at a time, `FIRST_CHUNK_STEPS` first and then doubling up to
`MAX_CHUNK_STEPS`: the replica wakes at the end of each chunk only to compute the next, so a segment cut
short by an arrival (most are, after a few steps) does not pay for steps it never ran, and a long one
wakes only a few times.
"""
from __future__ import annotations

from bisect import bisect_right

from fleetserve.engine.decode_run import DecodeRun
from fleetserve.engine.decode_run_start import apply_decode_run, begin_decode_run
from fleetserve.engine.request import Request
from fleetserve.engine.scheduler import Scheduler
from fleetserve.fleet.replicas import Replica
from fleetserve.perf.model import PerfModel
from fleetserve.perf.step_shape import mixed_shape
from fleetserve.sim.step_times import decode_step_ends
from fleetserve.sim.tracked import TrackedRequest

FIRST_CHUNK_STEPS = 8
MAX_CHUNK_STEPS = 512


class Segment:
    __slots__ = ("ends", "prefill_tracked", "run", "start", "steps", "tracked")

    def __init__(self, start: float, run: DecodeRun, tracked: list[TrackedRequest],
                 prefill_tracked: TrackedRequest | None) -> None:
        self.start = start
        self.run = run
        self.tracked = tracked  # the decoding requests, in running order
        self.prefill_tracked = prefill_tracked
        self.steps = run.steps  # steps to apply
        self.ends: list[float] = []  # end time of each step computed so far

    def extend(self, perf: PerfModel) -> float:
        """Compute the next step end times; returns the time to wake up at."""
        run = self.run
        prefill = run.prefill
        done = len(self.ends)
        if prefill is not None and done < len(prefill.chunks):
            self.ends = self._prefill_step_ends(perf)
            return self.ends[-1]
        decodes = len(self.tracked)
        first_context = run.first_context + done * decodes
        if prefill is not None:  # past its prompt, the newest request decodes too
            first_context += prefill.computed + prefill.tokens_through(done) + 1
            decodes += 1
        count = min(max(FIRST_CHUNK_STEPS, min(done, MAX_CHUNK_STEPS)), self.steps - done)
        start = self.ends[-1] if self.ends else self.start
        self.ends.extend(decode_step_ends(perf, start, decodes, first_context, count))
        return self.ends[-1]

    def _prefill_step_ends(self, perf: PerfModel) -> list[float]:
        run = self.run
        prefill = run.prefill
        assert prefill is not None
        decodes = len(self.tracked)
        step_time = perf.step_time
        now, cached, ends = self.start, prefill.computed, []
        for step, chunk in enumerate(prefill.chunks[:self.steps]):
            now += step_time(mixed_shape(chunk, cached, decodes, run.first_context + step * decodes))
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

    def apply(self, scheduler: Scheduler, router: Replica, record_token_times: bool) -> list[Request]:
        """Have the scheduler apply the steps run and record the tokens they produced; returns the requests
        that finished (ended in the scheduler), in running order."""
        steps = self.steps
        ends = self.ends
        finished = apply_decode_run(scheduler, self.run, steps)
        first = ends[0]
        times = ends[:steps] if record_token_times else None
        progress = router.progress
        for tracked in self.tracked:
            record = tracked.record
            if times is not None:
                record.token_times_s += times
            if record.first_token_s is None:
                record.first_token_s = first
                router.first_byte(tracked.ticket, first)
            progress(tracked.ticket, steps)
        prefill, tracked_prefill = self.run.prefill, self.prefill_tracked
        if prefill is not None and tracked_prefill is not None:
            sampled = prefill.tokens_sampled(steps)
            if sampled:
                first_index = len(prefill.chunks) - 1
                record = tracked_prefill.record
                if record_token_times:
                    record.token_times_s.extend(ends[first_index:steps])
                if record.first_token_s is None:
                    record.first_token_s = ends[first_index]
                    router.first_byte(tracked_prefill.ticket, record.first_token_s)
                progress(tracked_prefill.ticket, sampled)
        return finished


def plan_segment(scheduler: Scheduler, tracked: dict[str, TrackedRequest], now: float) -> Segment | None:
    """A segment from `now` over the decode run the scheduler plans (`begin_decode_run`, which may
    begin the step that admits a request), or None when the next step must be simulated in full."""
    run = begin_decode_run(scheduler)
    if run is None:
        return None
    prefill = run.prefill
    return Segment(now, run, [tracked[request.request_id] for request in run.decoding],
                   None if prefill is None else tracked[prefill.request.request_id])
