"""Whether a replica takes a request: the checks the live engine and the simulated replica share.

A request is refused when it can never fit the model's context or the whole KV cache (400: sending it
again will not help), or when the replica's waiting queue is full (429: it may be sent again later). A
refusal keeps what was wrong (`reason`) apart from what to do (`advice`): the server answers with both,
while a simulated replica records the reason alone, as it always has, so simulated results do not move.
Plain Python, no torch: the simulator imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

NEVER_FITS = 400
QUEUE_FULL = 429


@dataclass(frozen=True)
class Refusal:
    status: int  # the HTTP status the server answers with: NEVER_FITS or QUEUE_FULL
    param: str | None  # the request field at fault, when one is
    reason: str
    advice: str

    @property
    def message(self) -> str:
        return f"{self.reason}; {self.advice}"

    @property
    def error_kind(self) -> str:
        """The error kind a live benchmark records for this answer from `fleetserve serve`."""
        return f"http_status_{self.status}"


class RequestRefused(ValueError):
    """A refusal raised by code that cannot return one (the scheduler's add_request)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def admission_refusal(num_prompt_tokens: int, max_tokens: int | None, max_model_len: int,
                      num_waiting: int = 0, max_queue: int | None = None) -> Refusal | None:
    """The first reason a replica turns the request away, or None to take it. `max_tokens` None leaves the
    output to fill the context; `max_queue` None checks lengths only (the offline engine has no queue)."""
    if num_prompt_tokens >= max_model_len:
        return Refusal(NEVER_FITS, "prompt",
                       f"the prompt has {num_prompt_tokens} tokens but the model's context is {max_model_len} "
                       f"tokens", "shorten the prompt")
    if max_tokens is not None and num_prompt_tokens + max_tokens > max_model_len:
        return Refusal(NEVER_FITS, "max_tokens",
                       f"the prompt ({num_prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                       f"{num_prompt_tokens + max_tokens} tokens, beyond the model's context of {max_model_len}",
                       "lower max_tokens or shorten the prompt")
    return None if max_queue is None else queue_refusal(num_waiting, max_queue)


def queue_refusal(num_waiting: int, max_queue: int) -> Refusal | None:
    """The queue check alone, for a caller that has checked the lengths already."""
    if num_waiting >= max_queue:
        return Refusal(QUEUE_FULL, None, f"{num_waiting} requests are already waiting (max_queue {max_queue})",
                       "retry later")
    return None


def kv_cache_refusal(num_prompt_tokens: int, max_tokens: int, blocks_needed: int,
                     num_blocks: int) -> Refusal | None:
    """A request whose prompt and output would need more KV blocks than the whole cache holds could only
    ever run by preempting itself, forever."""
    if blocks_needed <= num_blocks:
        return None
    return Refusal(NEVER_FITS, "max_tokens",
                   f"the prompt ({num_prompt_tokens} tokens) plus max_tokens ({max_tokens}) needs {blocks_needed} "
                   f"KV blocks but the whole cache has {num_blocks}",
                   "lower max_tokens, shorten the prompt or give the KV cache more memory")
