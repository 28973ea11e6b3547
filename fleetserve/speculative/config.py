"""The speculative-decoding configuration, with vLLM's field names (`--speculative-config` takes the same
JSON as vLLM's)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

METHODS = ("ngram", "suffix")
MAX_SPECULATIVE_TOKENS = 32


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    # The most tokens drafted per request per step. suffix: None means the tree depth bounds it.
    num_speculative_tokens: int | None = None
    # ngram: the longest and shortest n-gram at the end of the text to look up earlier in it.
    prompt_lookup_max: int | None = None
    prompt_lookup_min: int | None = None
    # suffix (SuffixDecoding, as in vLLM's suffix method).
    suffix_decoding_max_tree_depth: int = 24  # the longest suffix matched, and the deepest draft
    suffix_decoding_max_cached_requests: int = 10000  # finished outputs kept in the global tree, FIFO
    suffix_decoding_max_spec_factor: float = 1.0  # a draft is at most this many times the match length
    suffix_decoding_min_token_prob: float = 0.1  # a draft stops at a token below this estimated probability
    # fleetserve: choose each request's draft length from its acceptance and the step cost; False drafts
    # as many tokens as the proposer finds, up to num_speculative_tokens.
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method {self.method!r} is not known; use one of {', '.join(METHODS)}")
        k = self.num_speculative_tokens
        if self.method == "ngram" and k is None:
            raise ValueError('the ngram method needs num_speculative_tokens, e.g. {"method": "ngram", '
                             '"num_speculative_tokens": 4}')
        if k is not None and not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(f"num_speculative_tokens must be from 1 to {MAX_SPECULATIVE_TOKENS}, got {k}")
        if self.method == "ngram":
            low, high = self.prompt_lookup_min, self.prompt_lookup_max
            # vLLM's defaults: either bound alone sets both.
            if low is None and high is None:
                low = high = 5
            low, high = (high if low is None else low), (low if high is None else high)
            assert low is not None and high is not None
            if not 1 <= low <= high:
                raise ValueError(f"prompt_lookup_min ({low}) must be >= 1 and <= prompt_lookup_max ({high})")
            object.__setattr__(self, "prompt_lookup_min", low)
            object.__setattr__(self, "prompt_lookup_max", high)
        if self.suffix_decoding_max_tree_depth < 1:
            raise ValueError(f"suffix_decoding_max_tree_depth must be >= 1, got {self.suffix_decoding_max_tree_depth}")
        if self.suffix_decoding_max_cached_requests < 0:
            raise ValueError("suffix_decoding_max_cached_requests must be >= 0 (0 keeps no global tree), got "
                             f"{self.suffix_decoding_max_cached_requests}")
        if not self.suffix_decoding_max_spec_factor > 0:
            raise ValueError(f"suffix_decoding_max_spec_factor must be > 0, got {self.suffix_decoding_max_spec_factor}")
        if not 0 <= self.suffix_decoding_min_token_prob <= 1:
            raise ValueError("suffix_decoding_min_token_prob must be in [0, 1], got "
                             f"{self.suffix_decoding_min_token_prob}")

    @property
    def max_draft(self) -> int:
        """The most tokens a request drafts in one step."""
        if self.num_speculative_tokens is not None:
            return self.num_speculative_tokens
        return min(self.suffix_decoding_max_tree_depth, MAX_SPECULATIVE_TOKENS)

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str | None) -> SpeculativeConfig | None:
        """From a config, a dict or its JSON text (as `--speculative-config` takes it); None stays None."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"the speculative config is not valid JSON ({exc.msg}); write it like "
                                 '\'{"method": "ngram", "num_speculative_tokens": 4}\'') from None
        if not isinstance(value, dict):
            raise ValueError(f"the speculative config must be a JSON object, got {value!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown speculative config field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        if "method" not in value:
            raise ValueError(f"the speculative config needs a method: one of {', '.join(METHODS)}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
