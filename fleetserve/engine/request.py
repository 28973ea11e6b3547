"""A request as the scheduler sees it: token ids, how many of them are in the KV cache, and its state."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fleetserve.engine.sampling_params import InvalidRequestError, SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_ABORTED)


@dataclass(slots=True)  # compact: the simulator keeps thousands in flight
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = 0.0
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    block_hashes: list[int] = field(default_factory=list)
    # Drafted tokens that the next step verifies after the last known token (speculative decoding); set by
    # the engine's proposer, cleared when a step verifies them or the request is preempted.
    spec_token_ids: list[int] = field(default_factory=list)
    # Whether no sampled token can end it (no stop tokens; end of sequence ignored or unknown), so that only
    # its length decides when it ends. Fixed at creation: the decode-run planner reads it for every running
    # request at every run.
    stops_only_at_length: bool = field(init=False)
    # From the sampling params, read by the scheduler's queue order and victim choice at every step.
    priority: int = field(init=False)
    offline: bool = field(init=False)

    def __post_init__(self) -> None:
        params = self.sampling_params
        self.priority = params.priority
        self.offline = params.offline
        self.stops_only_at_length = not params.stop_token_ids and (params.ignore_eos or not self.eos_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_id_at(self, index: int) -> int:
        n = len(self.prompt_token_ids)
        return self.prompt_token_ids[index] if index < n else self.output_token_ids[index - n]

    def token_ids_slice(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens or 1 << 30

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None

    def tokens_before_length_stop(self, max_model_len: int) -> int:
        """How many more tokens it may sample before a length stop ends it: at max_tokens output tokens (never
        before min_tokens) or at max_model_len tokens in all. A request with none left stops."""
        params = self.sampling_params
        num_output_tokens = len(self.output_token_ids)
        limit = params.max_tokens or 1 << 30
        if limit < params.min_tokens:
            limit = params.min_tokens
        by_output = limit - num_output_tokens
        by_context = max_model_len - len(self.prompt_token_ids) - num_output_tokens
        return by_output if by_output < by_context else by_context

    def resume_output(self, token_ids: list[int], vocab_size: int, max_model_len: int) -> None:
        """Take `token_ids` as the output generated so far: a generation begun elsewhere continues here, its
        tokens recomputed with the prompt as after a preemption. Refuses (InvalidRequestError) ids outside the
        vocabulary, and a token after which the request had already stopped (end of sequence, a stop token,
        max_tokens or the context length): nothing after it can be resumed."""
        for index, token_id in enumerate(token_ids):
            if not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
                raise InvalidRequestError(f"resume_token_ids[{index}] = {token_id!r} is outside the vocabulary "
                                          f"[0, {vocab_size})", "resume_token_ids")
            self.output_token_ids.append(token_id)
            if self.check_stop_after_token(max_model_len):
                why = ("max_tokens or the context length" if self.status is RequestStatus.FINISHED_LENGTH
                       else "the end-of-sequence token" if self.stop_reason is None
                       else f"the stop token {self.stop_reason}")
                raise InvalidRequestError(f"the generation already ended at resume_token_ids[{index}] ({why}); "
                                          f"there is nothing left to resume", "resume_token_ids")

    def check_stop_after_token(self, max_model_len: int) -> bool:
        """Apply the stop rules to the newest output token: end of sequence and stop tokens (from min_tokens on),
        then the length stop; string stops live in the detokenizer."""
        params = self.sampling_params
        if len(self.output_token_ids) >= params.min_tokens:
            last = self.output_token_ids[-1]
            if not params.ignore_eos and last in self.eos_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                self.stop_reason = None
                return True
            if last in params.stop_token_ids:
                self.status = RequestStatus.FINISHED_STOPPED
                self.stop_reason = last
                return True
        if self.tokens_before_length_stop(max_model_len) <= 0:
            self.status = RequestStatus.FINISHED_LENGTH
            return True
        return False
