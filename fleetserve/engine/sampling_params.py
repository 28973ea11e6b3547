"""Per-request sampling settings, validated on construction so bad input never reaches the engine loop."""
from __future__ import annotations

from dataclasses import dataclass, field

from fleetserve.wire.service_class import OFFLINE, ONLINE, SERVICE_CLASSES

GREEDY_TEMPERATURE = 1e-5


class InvalidRequestError(ValueError):
    """A request that the engine refuses; the message names the offending field and value."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    n: int = 1
    # Scheduling, as vLLM's `priority`: lower runs first under the priority policy. An offline request fills
    # the capacity online ones leave (fleetserve.engine.service_classes).
    priority: int = 0
    service_class: str = ONLINE

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise InvalidRequestError(
                f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}", "temperature")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p")
        if not isinstance(self.top_k, int) or (self.top_k < 1 and self.top_k not in (-1, 0)):
            raise InvalidRequestError(f"top_k must be -1 or 0 (disabled) or >= 1, got {self.top_k!r}", "top_k")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens <= 0):
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}",
                                      "max_tokens")
        if self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be >= 0, got {self.min_tokens!r}", "min_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequestError(f"logprobs must be between 0 and 20, got {self.logprobs!r}", "logprobs")
        if not isinstance(self.n, int) or self.n < 1:
            raise InvalidRequestError(f"n must be an integer >= 1, got {self.n!r}", "n")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequestError(f"seed must be an integer, got {self.seed!r}", "seed")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise InvalidRequestError(f"priority must be an integer (lower runs first), got {self.priority!r}",
                                      "priority")
        if self.service_class not in SERVICE_CLASSES:
            raise InvalidRequestError(f"service_class must be one of {', '.join(SERVICE_CLASSES)}, got "
                                      f"{self.service_class!r}", "service_class")
        for token_id in self.stop_token_ids:
            if not isinstance(token_id, int) or token_id < 0:
                raise InvalidRequestError(f"stop_token_ids must be non-negative integers, got {token_id!r}",
                                          "stop_token_ids")

    @property
    def offline(self) -> bool:
        return self.service_class == OFFLINE

    @property
    def greedy(self) -> bool:
        # Below this, logits / temperature overflows float32; the distribution is one-hot anyway.
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def stop_holdback(self) -> int:
        """Characters a stream must hold back because they may still become the start of a stop string."""
        return max((len(s) for s in self.stop), default=1) - 1
