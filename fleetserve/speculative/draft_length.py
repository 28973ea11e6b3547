"""How many drafted tokens each request verifies in the next step: chosen from each request's acceptance so
far and the step-cost model, so that speculation pays or stays off.

A request whose drafts are each accepted with probability a (given the ones before were) gains a**i
expected tokens from its i-th draft, and every draft adds a decode row to the step, which the step-cost
model prices. Starting from the plain step (one token per decoding request), drafts are added in order of
their expected gain while that gain per added second beats the step's tokens per second so far: the drafts
that raise the step's expected throughput, and no others. At a large batch a step's tokens per second is
already high and an extra row costs as much as anyone's, so drafts stop paying and none are chosen; a
request whose drafts keep failing falls below every threshold.

A request's acceptance is estimated from its own verifications (accepted drafts against rejections, with a
prior of one of each), as the drafts of one request resemble each other more than those of others.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Protocol

from fleetserve.perf.model import StepShape

PRIOR_ACCEPTED = 1.0
PRIOR_REJECTED = 1.0


class StepTime(Protocol):
    def step_time(self, shape: StepShape) -> float: ...


@dataclass
class Acceptance:
    accepted: float = PRIOR_ACCEPTED
    rejected: float = PRIOR_REJECTED

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)


@dataclass(frozen=True)
class Candidate:
    request_id: str
    drafts: int  # tokens the proposer found (the most this request may verify)
    context: int  # tokens the request attends over at its next decode


class DraftLengths:
    def __init__(self, cost: StepTime | None, adaptive: bool = True) -> None:
        self.cost = cost
        self.adaptive = adaptive and cost is not None
        self.acceptance: dict[str, Acceptance] = {}

    def observe(self, request_id: str, drafted: int, accepted: int) -> None:
        """A verification of `drafted` drafts accepted the first `accepted`."""
        stats = self.acceptance.setdefault(request_id, Acceptance())
        stats.accepted += accepted
        if accepted < drafted:
            stats.rejected += 1

    def release(self, request_id: str) -> None:
        self.acceptance.pop(request_id, None)

    def rate(self, request_id: str) -> float:
        stats = self.acceptance.get(request_id)
        return stats.rate if stats else PRIOR_ACCEPTED / (PRIOR_ACCEPTED + PRIOR_REJECTED)

    def choose(self, candidates: list[Candidate], decode_seqs: int, decode_context: int,
               max_rows: int | None = None, prefill_tokens: int = 0) -> dict[str, int]:
        """Drafts to verify per candidate, beside a step of `decode_seqs` decodes over `decode_context` tokens
        (the candidates among them) and `prefill_tokens` prompt tokens, with at most `max_rows` decode rows in
        all. Beside a prompt chunk a step is long and a row adds little to it, so drafts pay sooner."""
        if max_rows is not None and max_rows <= decode_seqs:
            return {c.request_id: 0 for c in candidates}
        if not self.adaptive:
            return _within_rows(candidates, decode_seqs, max_rows)
        assert self.cost is not None
        rows, context = decode_seqs, decode_context + prefill_tokens
        prefill_seqs = 1 if prefill_tokens else 0
        step_time = self.cost.step_time(StepShape(prefill_tokens, rows, context, prefill_seqs))
        expected = float(decode_seqs)
        chosen = {c.request_id: 0 for c in candidates}
        # (-gain, request index, draft number): each request's next draft, best first.
        frontier = [(-self.rate(c.request_id), index, 1) for index, c in enumerate(candidates) if c.drafts > 0]
        heapq.heapify(frontier)
        while frontier:
            negative_gain, index, number = heapq.heappop(frontier)
            candidate = candidates[index]
            longer = self.cost.step_time(StepShape(prefill_tokens, rows + 1, context + candidate.context + number,
                                                   prefill_seqs))
            added = longer - step_time
            gain = -negative_gain
            if gain <= 0 or (added > 0 and gain / added <= expected / step_time):
                continue
            if max_rows is not None and rows >= max_rows:
                break
            chosen[candidate.request_id] = number
            rows, context, step_time, expected = rows + 1, context + candidate.context + number, longer, expected + gain
            if number < candidate.drafts:
                heapq.heappush(frontier, (negative_gain * self.rate(candidate.request_id), index, number + 1))
        return chosen


def _within_rows(candidates: list[Candidate], decode_seqs: int, max_rows: int | None) -> dict[str, int]:
    """Every draft found, in candidate order, as long as the rows last."""
    room = None if max_rows is None else max_rows - decode_seqs
    chosen = {}
    for candidate in candidates:
        count = candidate.drafts if room is None else min(candidate.drafts, room)
        chosen[candidate.request_id] = count
        if room is not None:
            room -= count
    return chosen
