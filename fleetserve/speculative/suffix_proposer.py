"""SuffixDecoding (Oliaro et al. 2024; vLLM's "suffix" method): drafts from a suffix tree over the request's
own prompt and output, and from one over the outputs of finished requests; the draft with the higher score
(expected accepted tokens) wins, the request's own on a tie."""
from __future__ import annotations

from collections import deque
from itertools import count
from typing import Sequence

from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.speculative.suffix_tree import Draft, SuffixTree

_TEXT = 0  # the one sequence of a request's own tree


class _RequestTree:
    def __init__(self, max_depth: int, prompt_len: int):
        self.tree = SuffixTree(max_depth)
        self.prompt_len = prompt_len
        self.tree.extend(_TEXT, ())

    @property
    def text(self) -> Sequence[int]:
        return self.tree.sequence(_TEXT)


class SuffixProposer:
    def __init__(self, config: SpeculativeConfig):
        self.config = config
        self._requests: dict[str, _RequestTree] = {}
        self._finished = SuffixTree(config.suffix_decoding_max_tree_depth)
        self._finished_order: deque[int] = deque()
        self._finished_ids = count()

    def propose(self, request_id: str, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int],
                max_draft: int) -> list[int]:
        request = self._requests.get(request_id)
        if request is None:
            request = self._requests[request_id] = _RequestTree(self.config.suffix_decoding_max_tree_depth,
                                                                len(prompt_token_ids))
        seen = len(request.text)
        if seen < len(prompt_token_ids):
            request.tree.extend(_TEXT, prompt_token_ids[seen:])
            seen = len(prompt_token_ids)
        request.tree.extend(_TEXT, output_token_ids[seen - len(prompt_token_ids):])
        return self.draft(request, min(max_draft, self.config.max_draft)).tokens

    def draft(self, request: _RequestTree, max_draft: int) -> Draft:
        config = self.config
        args = (max_draft, config.suffix_decoding_max_spec_factor, config.suffix_decoding_min_token_prob)
        own_draft = request.tree.speculate_growing(*args)
        if not len(self._finished):
            return own_draft
        finished_draft = self._finished.speculate(request.text, *args)
        return finished_draft if finished_draft.score > own_draft.score else own_draft

    def finish(self, request_id: str, output_token_ids: Sequence[int] | None = None) -> None:
        """Release the request's tree; its output (as far as drafting saw it, unless given) joins the finished
        outputs."""
        request = self._requests.pop(request_id, None)
        limit = self.config.suffix_decoding_max_cached_requests
        if request is None or limit == 0:
            return
        output = request.text[request.prompt_len:] if output_token_ids is None else output_token_ids
        if not output:
            return
        while len(self._finished_order) >= limit:
            self._finished.remove(self._finished_order.popleft())
        seq_id = next(self._finished_ids)
        self._finished.extend(seq_id, output)
        self._finished.seal()
        self._finished_order.append(seq_id)

    def tracked_requests(self) -> int:
        return len(self._requests)

    def cached_outputs(self) -> int:
        return len(self._finished_order)
