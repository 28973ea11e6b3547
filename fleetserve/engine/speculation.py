"""Speculative decoding in the engine: after each step, every decoding request's proposer drafts the tokens
that may follow, `DraftLengths` keeps the drafts that pay, and the next step verifies them as extra decode
rows under the token budget (the scheduler counts them, the runner computes them, `draft_verifier` accepts
or rejects them, and the scheduler rolls back past the rejected). The simulator drives the same scheduler
with drafts whose acceptance it models."""
from __future__ import annotations

from typing import Callable

from fleetserve.engine.scheduler import Scheduler
from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.speculative.draft_length import Candidate, DraftLengths, StepTime
from fleetserve.speculative.proposer import Proposer
from fleetserve.speculative.stats import SpeculationStats


class Speculation:
    def __init__(self, config: SpeculativeConfig, step_cost: StepTime | None, proposer: Proposer | None = None,
                 same_kernel_rows: Callable[[int], int] | None = None) -> None:
        """`same_kernel_rows(rows)`: the most decode rows a step of `rows` decodes may grow to with drafts and
        still run the same kernels (None: no bound), so that speculation never changes a token's arithmetic."""
        self.config = config
        self.same_kernel_rows = same_kernel_rows
        if proposer is None:
            from fleetserve.speculative.proposers import make_proposer
            proposer = make_proposer(config)
        self.proposer = proposer
        self.lengths = DraftLengths(step_cost, config.adaptive)
        self.stats = SpeculationStats()

    def verified(self, request_id: str, drafted: int, accepted: int) -> None:
        self.stats.record(drafted, accepted)
        self.lengths.observe(request_id, drafted, accepted)

    def release(self, request_id: str, output_token_ids: list[int] | None = None) -> None:
        self.proposer.finish(request_id, output_token_ids)
        self.lengths.release(request_id)

    def propose(self, scheduler: Scheduler, max_model_len: int) -> None:
        """Set the drafts of every running request whose next step is a decode."""
        candidates: list[Candidate] = []
        found: dict[str, list[int]] = {}
        decode_seqs = decode_context = prompt_left = 0
        max_draft = self.config.max_draft
        for request in scheduler.running:
            computed = request.num_computed_tokens
            left = len(request.prompt_token_ids) + len(request.output_token_ids) - computed
            if left != 1:
                prompt_left += left
                continue
            decode_seqs += 1
            decode_context += computed + 1
            request.spec_token_ids = []
            # Every token of a verification may be emitted: never draft past the request's length stop.
            limit = min(max_draft, request.tokens_before_length_stop(max_model_len) - 1)
            drafts = self.proposer.propose(request.request_id, request.prompt_token_ids, request.output_token_ids,
                                           max(limit, 0))
            if drafts and limit > 0:
                found[request.request_id] = drafts[:limit]
                candidates.append(Candidate(request.request_id, len(found[request.request_id]), computed + 1))
        requests = scheduler.requests
        max_rows = self.same_kernel_rows(decode_seqs) if self.same_kernel_rows and decode_seqs else None
        # The next step's prompt tokens, as the scheduler will fill its budget: the running requests' rest of
        # their prompts, and all the room left if requests wait to be admitted.
        room = max(scheduler.config.max_num_batched_tokens - decode_seqs, 0)
        prefill = min(room, room if scheduler.waiting else prompt_left)
        chosen = self.lengths.choose(candidates, decode_seqs, decode_context, max_rows, prefill)
        for request_id, count in chosen.items():
            requests[request_id].spec_token_ids = found[request_id][:count]
