"""Measures the real engine's step time over a grid of step shapes, for `fleetserve profile`.

Each grid point is a batch the engine's scheduler would build: `decode_seqs` sequences decoding at
`decode_context` tokens each, plus optionally one sequence prefilling a chunk of `prefill_tokens` after
`prefill_context` computed tokens. Reaching such a state by running the prompts first would spend most of
the budget on prefill, so the requests are placed directly: added through the engine (so it tracks them
as any request), then given KV blocks and computed-token counts and put in the scheduler's running list.
The KV contents are whatever the cache holds; the arithmetic, and so the time, does not depend on them.
Then `engine.step()` (scheduling, the model, sampling, detokenizing: all of a live step) is timed, after
one untimed step that settles one-off costs such as hashing the placed blocks. A prefilling request is
placed afresh for each step with exactly its chunk left, so the scheduler batches that chunk whole.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from fleetserve.engine.engine import LLMEngine
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.scheduler import SchedulerOutput
from fleetserve.perf.profiled import StepSample
from fleetserve.perf.step_shape import shape_of

MAX_SPREAD = 0.3
MAX_RETRIES = 2


@dataclass(frozen=True)
class GridPoint:
    decode_seqs: int
    decode_context: int
    prefill_tokens: int = 0
    prefill_context: int = 0

    def kv_tokens(self, timed_steps: int) -> int:
        prefill = self.prefill_context + self.prefill_tokens if self.prefill_tokens else 0
        return self.decode_seqs * (self.decode_context + timed_steps + 2) + prefill


def default_grid(max_num_seqs: int, max_batched_tokens: int) -> list[GridPoint]:
    """Decode-only, prefill-only and mixed steps spanning the batch sizes and contexts a replica sees."""
    points = [GridPoint(seqs, context) for seqs in (1, 4, 16, 32, 64) for context in (64, 512, 1024)]
    points += [GridPoint(seqs, 2048) for seqs in (4, 16)]
    # Either side of the block kernel's fused-path limit (8 rows), where the step time jumps.
    points += [GridPoint(seqs, context) for seqs, context in ((2, 512), (6, 256), (8, 1024), (10, 512), (12, 64))]
    points += [GridPoint(0, 0, chunk, context) for chunk in (32, 128, 256, 512) for context in (0, 1024)]
    points += [GridPoint(seqs, 512, chunk, context) for seqs, chunk, context in
               ((8, 128, 0), (8, 448, 512), (32, 256, 0), (32, 448, 1024), (63, 64, 256), (63, 384, 0))]
    return [point for point in points
            if point.decode_seqs + (1 if point.prefill_tokens else 0) <= max_num_seqs
            and point.decode_seqs + point.prefill_tokens <= max_batched_tokens]


class EngineProfiler:
    def __init__(self, engine: LLMEngine, timed_steps: int = 3, seed: int = 0) -> None:
        if engine.has_unfinished_requests():
            raise ValueError("profile an idle engine: it has unfinished requests")
        self.engine = engine
        self.timed_steps = timed_steps
        self.random = random.Random(seed)
        self.skipped: list[tuple[GridPoint, str]] = []

    def measure(self, grid: list[GridPoint], progress: bool = False) -> list[StepSample]:
        samples: list[StepSample] = []
        capacity = self.engine.kv_cache.num_blocks * self.engine.kv_cache.block_size
        for index, point in enumerate(grid):
            reason = self._unfit_reason(point, capacity)
            if reason is not None:
                self.skipped.append((point, reason))
                continue
            started = time.perf_counter()
            samples += self._measure_steady(point)
            if progress:
                print(f"[{index + 1}/{len(grid)}] {point}: {time.perf_counter() - started:.1f} s", flush=True)
        return samples

    def _unfit_reason(self, point: GridPoint, capacity: int) -> str | None:
        if point.kv_tokens(self.timed_steps) > capacity * 0.95:
            return f"needs {point.kv_tokens(self.timed_steps)} KV tokens, the cache holds {capacity}"
        longest = max(point.decode_context + self.timed_steps + 2, point.prefill_context + point.prefill_tokens)
        if longest + 1 >= self.engine.max_model_len:
            return f"needs {longest} tokens of context, beyond max_model_len {self.engine.max_model_len}"
        return None

    def _measure_steady(self, point: GridPoint) -> list[StepSample]:
        """The point's steps, measured again (up to `MAX_RETRIES` times) while they disagree by more than
        `MAX_SPREAD`: another process taking a core can make one step many times slower."""
        best: list[StepSample] = []
        for _ in range(1 + MAX_RETRIES):
            samples = self._measure_point(point)
            if not best or _spread(samples) < _spread(best):
                best = samples
            if _spread(best) <= MAX_SPREAD:
                break
        return best

    def _measure_point(self, point: GridPoint) -> list[StepSample]:
        """One untimed step, then `timed_steps` timed ones. Decoding requests stay for all of them; each step
        gets a fresh prefilling request (left with exactly its chunk to compute), aborted after it."""
        engine = self.engine
        placed = [self._place(point.decode_context, point.decode_context, decoding=True)
                  for _ in range(point.decode_seqs)]
        samples = []
        scheduler = engine.scheduler
        schedule = scheduler.schedule
        built: list[SchedulerOutput] = []

        def recording_schedule() -> SchedulerOutput:
            out = schedule()
            built.append(out)
            return out

        scheduler.schedule = recording_schedule  # type: ignore[method-assign]
        try:
            for step in range(self.timed_steps + 1):
                prefill = None
                if point.prefill_tokens:
                    prefill = self._place(point.prefill_context + point.prefill_tokens, point.prefill_context,
                                          decoding=False)
                    placed.append(prefill)
                started = time.perf_counter()
                engine.step()
                seconds = time.perf_counter() - started
                if step:  # the first step settles one-off costs (hashing the placed blocks, allocations)
                    samples.append(StepSample.of(shape_of(built[-1]), seconds))
                if prefill is not None:
                    engine.abort_request(prefill.request_id)
                    placed.remove(prefill)
        finally:
            del scheduler.schedule  # back to the class's method
            engine.abort_request([request.request_id for request in placed])
        return samples

    def _place(self, prompt_tokens: int, computed: int, decoding: bool) -> Request:
        """A running request with `computed` tokens in the KV cache, next to decode (or prefill the rest)."""
        engine = self.engine
        vocab = engine.model_config.vocab_size
        prompt = [self.random.randrange(vocab) for _ in range(prompt_tokens)]
        # Enough output for every step of the point, so no request finishes while it is measured.
        params = SamplingParams(temperature=0.0, max_tokens=self.timed_steps + 4, ignore_eos=True)
        request_id = engine.add_request(prompt, params)
        scheduler, kv = engine.scheduler, engine.kv_cache
        request = scheduler.requests[request_id]
        scheduler.waiting.remove(request)
        if decoding:
            request.output_token_ids.append(self.random.randrange(vocab))
        if computed and not kv.allocate_slots(request, computed):
            raise ValueError(f"the KV cache has no room to place {computed} tokens for profiling")
        request.num_computed_tokens = computed
        request.status = RequestStatus.RUNNING
        scheduler.running.append(request)
        return request


def _spread(samples: list[StepSample]) -> float:
    """Slowest over fastest step, less one."""
    times = [sample.seconds for sample in samples]
    return max(times) / min(times) - 1 if times else 0.0
