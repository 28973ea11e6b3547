"""What a proposer is: it drafts the tokens likely to follow a request's text, from text already seen."""
from __future__ import annotations

from typing import Protocol, Sequence


class Proposer(Protocol):
    def propose(self, request_id: str, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int],
                max_draft: int) -> list[int]:
        """Up to `max_draft` tokens likely to follow prompt + output (possibly none). Called once per step per
        decoding request with its text so far, which only grows between calls for the same request id."""
        ...

    def finish(self, request_id: str, output_token_ids: Sequence[int] | None = None) -> None:
        """The request ended with this output (None: as far as `propose` saw it): release what was kept for it
        (a proposer that learns from finished outputs keeps those)."""
        ...
