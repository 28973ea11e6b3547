"""Logprobs in the two OpenAI formats: chat (token, logprob, bytes, top_logprobs) and completions (tokens,
token_logprobs, top_logprobs, text_offset). Token text comes from the token's exact bytes, so a token
holding half of a multi-byte character shows as escaped bytes instead of a replacement character."""
from __future__ import annotations

from functools import lru_cache

from fleetserve.api.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob
from fleetserve.engine.outputs import TokenLogprob
from fleetserve.model.tokenizer import Tokenizer

# JSON has no -inf; vLLM clamps the same way.
MIN_LOGPROB = -9999.0


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE vocabularies spell each byte as one printable character; this inverts that spelling."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    byte_values, code_points = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(byte_values, code_points)}


class TokenText:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(tokenizer.backend, "decoder", None)
        self.byte_level = type(decoder).__name__ == "ByteLevel"
        self.unicode_to_byte = _gpt2_unicode_to_byte() if self.byte_level else {}
        self.bytes_of = lru_cache(maxsize=65536)(self._bytes_of)

    def _bytes_of(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens([token_id])[0]
        if piece is None:
            return b""
        if self.byte_level and all(ch in self.unicode_to_byte for ch in piece):
            return bytes(self.unicode_to_byte[ch] for ch in piece)
        return self.tokenizer.decode([token_id], skip_special_tokens=False).encode()

    def text_of(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="backslashreplace")


def _clamp(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB) if logprob == logprob else MIN_LOGPROB


def chat_logprobs(entries: list[TokenLogprob], text: TokenText) -> ChatLogprobs:
    content = []
    for entry in entries:
        raw = text.bytes_of(entry.token_id)
        top = [TopLogprob(token=text.text_of(i), logprob=_clamp(lp), bytes=list(text.bytes_of(i)))
               for i, lp in entry.top]
        content.append(ChatTokenLogprob(token=text.text_of(entry.token_id), logprob=_clamp(entry.logprob),
                                        bytes=list(raw), top_logprobs=top))
    return ChatLogprobs(content=content)


def completion_logprobs(entries: list[TokenLogprob], text: TokenText, start_offset: int) -> CompletionLogprobs:
    result = CompletionLogprobs()
    offset = start_offset
    for entry in entries:
        token = text.text_of(entry.token_id)
        result.tokens.append(token)
        result.token_logprobs.append(_clamp(entry.logprob))
        # As in vLLM, the chosen token is always among the top entries, even when logprobs=0.
        top = {text.text_of(i): _clamp(lp) for i, lp in entry.top}
        top.setdefault(token, _clamp(entry.logprob))
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(token)
    return result
