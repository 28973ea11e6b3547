"""Incremental detokenization with stop strings.

Text is released only when it is stable: never half of a multi-byte character (a trailing U+FFFD means
the bytes are incomplete), and never the characters that could still become the start of a stop string.
"""
from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Decoder, stop: list[str], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.skip_special_tokens = skip_special_tokens
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped_on: str | None = None

    def add_token(self, token_id: int) -> None:
        """Decode one more token; sets stopped_on (and cuts the text before it) when a stop string appears."""
        self.token_ids.append(token_id)
        ids = self.token_ids
        prefix = self.tokenizer.decode(ids[self.prefix_offset:self.read_offset], self.skip_special_tokens)
        full = self.tokenizer.decode(ids[self.prefix_offset:], self.skip_special_tokens)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return
        previous_len = len(self.text)
        self.text += full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        if self.stop:
            self._check_stop(previous_len)

    def resume(self, token_ids: list[int]) -> None:
        """Take `token_ids` as output already generated and released elsewhere (a resumed request): decode
        them as they were decoded there, and mark released what was released there. Text is released as far
        as `take_delta` allows after every token, and that bound only grows, so it depends on the tokens alone,
        not on how they were grouped into steps."""
        for token_id in token_ids:
            self.add_token(token_id)
        self.take_delta(finished=False)

    def _check_stop(self, previous_len: int) -> None:
        search_from = max(0, previous_len - self.holdback)
        cut = None
        for stop in self.stop:
            at = self.text.find(stop, search_from)
            if at != -1 and (cut is None or at < cut[0]):
                cut = (at, stop)
        if cut is not None:
            self.text = self.text[:cut[0]]
            self.stopped_on = cut[1]

    def take_delta(self, finished: bool) -> str:
        """Text not yet released; while unfinished, the tail that might begin a stop string stays back."""
        end = len(self.text) if finished or self.stopped_on else max(self.emitted, len(self.text) - self.holdback)
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta
