"""The simulator's proposer: simulated requests carry no text, so it drafts placeholder tokens (0), as many as
it is allowed, at the fraction of steps where a real proposer would find a match; whether the drafts are
accepted is the acceptance model's draw (fleetserve.sim.acceptance)."""
from __future__ import annotations

import random
from typing import Sequence

PLACEHOLDER_TOKEN = 0


class PlaceholderDrafts:
    def __init__(self, draft_availability: float = 1.0, seed: int = 0) -> None:
        self.draft_availability = draft_availability
        self.seed = seed
        self.streams: dict[str, random.Random] = {}

    def propose(self, request_id: str, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int],
                max_draft: int) -> list[int]:
        if self.draft_availability < 1:
            stream = self.streams.get(request_id)
            if stream is None:
                stream = self.streams[request_id] = random.Random(f"drafts:{self.seed}:{request_id}")
            if stream.random() >= self.draft_availability:
                return []
        return [PLACEHOLDER_TOKEN] * max_draft

    def finish(self, request_id: str, output_token_ids: Sequence[int] | None = None) -> None:
        self.streams.pop(request_id, None)
