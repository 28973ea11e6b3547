"""The OpenAI wire format: request and response schemas for chat completions, completions and models.

Requests ignore unknown fields (SDKs send extras freely); fields this server knows but cannot honour are
accepted in the schema and refused with a 400 that names them, never silently ignored.
"""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20
MAX_N = 128


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(False, description="vLLM extension: usage in every chunk")


class SamplingFields(OpenAIRequest):
    """Sampling options shared by /v1/chat/completions and /v1/completions."""
    model: str | None = Field(None, description="a served model name; omitted means the (only) served model")
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, description="0 means greedy; default 1.0")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="extension: -1 or 0 disables")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions, as in vLLM.
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = None
    priority: int = Field(0, strict=True, description="vLLM extension: lower runs first under the priority "
                          "scheduling policy")
    service_class: Literal["online", "offline"] | None = Field(
        None, description="fleetserve extension: offline work fills the capacity online work leaves; also set by "
        "the x-service-class header or service_tier=flex")
    service_tier: str | None = Field(None, description="OpenAI's field: 'flex' runs the request as offline work")
    # Known to OpenAI clients but not supported here: refused when set to anything but their neutral value.
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    kv_transfer_params: dict[str, Any] | None = Field(
        None, description="vLLM's disaggregated-prefill hand-off (fleetserve.wire.kv_transfer): "
        "{'do_remote_decode': true} on a prefill request; a prefill response's params on the decode request")
    return_token_ids: bool = Field(False, description="vLLM extension: each choice carries `token_ids`, the "
                                   "output token ids it adds (in a stream: those of each chunk), and the prompt's "
                                   "`prompt_token_ids` come once")
    resume_token_ids: list[int] | None = Field(
        None, description="fleetserve extension: continue a generation begun elsewhere (request migration). The "
        "ids are its output so far: they count as output (max_tokens, min_tokens, stops, usage), their text is not "
        "sent again, and a stream continues without its opening (no role chunk, echo or prompt_token_ids). "
        "Needs n=1 and one prompt")


class TextContentPart(OpenAIRequest):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None


class ResponseFormat(OpenAIRequest):
    type: str


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI in favour of "
                                                            "max_completion_tokens; both are accepted")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = Field(True, description="vLLM extension")
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


# --- responses ------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = Field(None, description="vLLM extension: the stop string or token id hit")
    token_ids: list[int] | None = None  # with return_token_ids


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None  # with return_token_ids
    kv_transfer_params: dict[str, Any] | None = None  # a prefill response's hand-off to the decode replica


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids
    token_ids: list[int] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    kv_transfer_params: dict[str, Any] | None = None  # a prefill response's hand-off to the decode replica


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "fleetserve"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class KVEventModel(BaseModel):
    type: Literal["stored", "removed", "cleared"]
    block_hashes: list[str]
    parent_hash: str | None = None
    token_count: int = 0


class KVEventBatch(BaseModel):
    seq: int
    ts: float
    events: list[KVEventModel]


class KVEventsResponse(BaseModel):
    next_seq: int
    block_size: int
    dropped: bool = Field(False, description="true when batches between `since` and the first returned batch "
                                             "are gone (evicted, or the replica restarted): resynchronise")
    batches: list[KVEventBatch]
