"""What the router needs to know about a request before it picks a replica: is the body valid, which model,
how long the prompt is, its block hashes, how many tokens it may generate, and its session.

The body is checked only as far as routing needs (the replica checks the rest), with the same OpenAI
error messages the replica gives. Prompts are tokenized exactly as a fleetserve replica tokenizes them
(the chat template for chat requests), so their block hashes match the replicas' KV-event feeds.
Without a tokenizer, token counts are estimated from the text and blocks are hashed over its bytes:
those hashes only ever match the router's own routing records, which is all an engine without a feed
offers anyway.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetserve.wire.block_hashes import chain_block_hashes
from fleetserve.wire.errors import APIError, bad_request
from fleetserve.wire.messages import template_message
from fleetserve.wire.service_class import OFFLINE, service_class_of
from fleetserve.wire.validation import describe_validation_errors

BYTES_PER_TOKEN_ESTIMATE = 4


class PromptTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]: ...


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class RoutedMessage(_Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None


class RoutedFields(_Lenient):
    model: str | None = None
    service_class: Any = None  # checked by fleetserve.wire.service_class, with the replica's message
    service_tier: Any = None
    stream: bool = False
    user: str | None = None
    n: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1)


class RoutedChat(RoutedFields):
    messages: list[RoutedMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True


class RoutedCompletion(RoutedFields):
    prompt: str | list[int] | list[str] | list[list[int]]


ENDPOINTS: dict[str, type[RoutedFields]] = {"chat": RoutedChat, "completions": RoutedCompletion}
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class RoutedCall:
    endpoint: str
    model: str | None
    stream: bool
    prompt_tokens: int
    max_output_tokens: int
    session_key: str | None
    prompt_token_ids: list[int] | None = None  # exact, when known
    prompt_bytes: bytes = b""  # when tokens are only estimated
    offline: bool = False  # the offline service class (fleetserve.wire.service_class)
    _hashes: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def block_hashes(self, block_size: int) -> tuple[int, ...]:
        hashes = self._hashes.get(block_size)
        if hashes is None:
            if self.prompt_token_ids is not None:
                hashes = tuple(chain_block_hashes(self.prompt_token_ids, block_size))
            else:
                hashes = tuple(chain_block_hashes(self.prompt_bytes, block_size * BYTES_PER_TOKEN_ESTIMATE))
            self._hashes[block_size] = hashes
        return hashes


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise bad_request("the request body is required; send a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise bad_request(f"the body is not UTF-8 ({exc.reason} at byte {exc.start}); send a UTF-8 JSON object")
    except json.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object")
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__} {str(data)[:80]!r}")
    return data


def validate(endpoint: str, data: dict[str, Any]) -> RoutedFields:
    try:
        return ENDPOINTS[endpoint].model_validate(data)
    except ValidationError as exc:
        # Same wording as the replica's own 400s.
        message, param = describe_validation_errors(exc.errors(), data)
        raise bad_request(message, param) from None


def _chat_prompt(body: RoutedChat, tokenizer: PromptTokenizer | None) -> tuple[list[int] | None, bytes]:
    messages = [template_message(m.role, m.content) for m in body.messages]  # as the replica renders them
    if tokenizer is not None:
        try:
            return tokenizer.encode_chat(messages, add_generation_prompt=body.add_generation_prompt), b""
        except Exception:  # noqa: BLE001 - the replica will refuse it with its own 400
            pass
    return None, json.dumps(messages, ensure_ascii=False).encode()


def _completion_prompt(body: RoutedCompletion,
                       tokenizer: PromptTokenizer | None) -> tuple[list[int] | None, bytes, int]:
    """(token ids of the first prompt, its bytes, total prompt tokens of all prompts)."""
    prompt = body.prompt
    single = isinstance(prompt, str) or not prompt or isinstance(prompt[0], int)
    prompts = cast("list[str | list[int]]", [prompt] if single else list(prompt))
    first = prompts[0] if prompts else ""
    if isinstance(first, list):
        ids: list[int] | None = list(first)
    elif tokenizer is not None:
        ids = tokenizer.encode(first)
    else:
        ids = None
    total = 0
    for one in prompts:
        if isinstance(one, list):
            total += len(one)
        elif one is first and ids is not None:
            total += len(ids)
        else:
            total += max(1, len(one.encode()) // BYTES_PER_TOKEN_ESTIMATE)
    return ids, first.encode() if isinstance(first, str) else b"", total


def describe_call(endpoint: str, raw: bytes, tokenizer: PromptTokenizer | None, default_max_tokens: int,
                  session_header: str | None, headers: Mapping[str, str] | None = None) -> RoutedCall:
    """Parse and check the body; raises APIError (400) naming what is wrong."""
    if endpoint not in ENDPOINTS:
        raise APIError(404, f"the router does not route {endpoint!r} requests")
    body = validate(endpoint, parse_json_body(raw))
    if isinstance(body, RoutedChat):
        ids, prompt_bytes = _chat_prompt(body, tokenizer)
        prompt_tokens = len(ids) if ids is not None else max(1, len(prompt_bytes) // BYTES_PER_TOKEN_ESTIMATE)
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    else:
        assert isinstance(body, RoutedCompletion)
        ids, prompt_bytes, prompt_tokens = _completion_prompt(body, tokenizer)
        max_tokens = body.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
    return RoutedCall(endpoint=endpoint, model=body.model or None, stream=body.stream,
                      prompt_tokens=max(prompt_tokens, 1), max_output_tokens=max_tokens * body.n,
                      session_key=session_header or body.user or None, prompt_token_ids=ids,
                      prompt_bytes=prompt_bytes,
                      offline=service_class_of(body.service_class, body.service_tier, headers or {}) == OFFLINE)
