"""Prompt lookup (vLLM's "ngram" method): draft the tokens that followed an earlier occurrence of the text's
last n tokens.

vLLM's rule (vllm/v1/spec_decode/ngram_proposer.py): the longest n in [prompt_lookup_min, prompt_lookup_max]
whose last-n-token n-gram occurs earlier in prompt + output with at least one token after it wins; of its
occurrences the earliest; the draft is the up to k tokens after that occurrence, not past the end of the text.
Since an occurrence of the last n tokens holds one of the last n - 1, trying n from the longest down and
looking up the n-gram's first position finds the same match. The first positions are indexed as tokens
arrive, so a step costs a few dictionary look-ups however long the text is."""
from __future__ import annotations

from typing import Sequence

from fleetserve.speculative.config import SpeculativeConfig


class NgramIndex:
    """One text, growing, and the first position of each of its n-grams for n in [min_n, max_n]."""

    def __init__(self, min_n: int, max_n: int):
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._first_start: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_n, max_n + 1)}

    def extend(self, new_tokens: Sequence[int]) -> None:
        tokens = self.tokens
        for token in new_tokens:
            tokens.append(token)
            end = len(tokens)
            for n, first_start in self._first_start.items():
                if end >= n:
                    first_start.setdefault(tuple(tokens[end - n:end]), end - n)

    def draft(self, k: int) -> list[int]:
        """The up to k tokens that followed the earliest earlier occurrence of the longest matching n-gram."""
        tokens = self.tokens
        end = len(tokens)
        if k <= 0:
            return []
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            start = self._first_start[n].get(tuple(tokens[end - n:]))
            # The first occurrence is the text's own last n tokens when there is no earlier one.
            if start is not None and start + n < end:
                return tokens[start + n:start + n + k]
        return []


class NgramProposer:
    def __init__(self, config: SpeculativeConfig):
        if config.prompt_lookup_min is None or config.prompt_lookup_max is None:
            raise ValueError("the ngram proposer needs prompt_lookup_min and prompt_lookup_max; build its "
                             'config with method "ngram", which sets them')
        self.config = config
        self._min_n, self._max_n = config.prompt_lookup_min, config.prompt_lookup_max
        self._indexes: dict[str, NgramIndex] = {}

    def propose(self, request_id: str, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int],
                max_draft: int) -> list[int]:
        index = self._indexes.get(request_id)
        if index is None:
            index = self._indexes[request_id] = NgramIndex(self._min_n, self._max_n)
        seen = len(index.tokens)
        if seen < len(prompt_token_ids):
            index.extend(prompt_token_ids[seen:])
            seen = len(prompt_token_ids)
        index.extend(output_token_ids[seen - len(prompt_token_ids):])
        return index.draft(min(max_draft, self.config.max_draft))

    def finish(self, request_id: str, output_token_ids: Sequence[int] | None = None) -> None:
        self._indexes.pop(request_id, None)

    def tracked_requests(self) -> int:
        return len(self._indexes)
