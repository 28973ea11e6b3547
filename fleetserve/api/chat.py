"""POST /v1/chat/completions: messages through the model's chat template, n samples, streaming or not."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from jinja2.exceptions import TemplateError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fleetserve.api.generation import (
    ChoiceState,
    Job,
    collect,
    exported_params,
    resume_of,
    resumed_headers,
    sampling_params,
    service_class_of,
    start_stream,
    usage_of,
)
from fleetserve.api.kv_transfer import handoff_of
from fleetserve.api.logprobs import chat_logprobs
from fleetserve.api.protocol import AssistantMessage, ChatChoice, ChatCompletionRequest, ChatCompletionResponse
from fleetserve.api.sse import EventStreamResponse, RenderChoice, completion_events
from fleetserve.engine.outputs import RequestOutput
from fleetserve.wire.errors import bad_request
from fleetserve.wire.messages import template_messages

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState


def render_prompt(state: ServerState, body: ChatCompletionRequest) -> list[int]:
    messages = template_messages(m.model_dump(include={"role", "content"}) for m in body.messages)
    try:
        return state.tokenizer.encode_chat(messages, add_generation_prompt=body.add_generation_prompt)
    except TemplateError as exc:
        raise bad_request(f"the chat template rejected the messages: {exc}", "messages") from exc
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request(f"response_format type {body.response_format.type!r} is not supported by this server; "
                          f"use 'text' or omit it", "response_format")
    if body.tools:
        raise bad_request("tools are not supported by this server; omit them", "tools")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request(f"top_logprobs={body.top_logprobs} needs logprobs=true", "top_logprobs")


async def create_chat_completion(state: ServerState, request: Request, body: ChatCompletionRequest) -> Response:
    state.require_engine()
    model = state.resolve_model(body.model)
    refuse_unsupported(body)
    prompt_ids = await asyncio.to_thread(render_prompt, state, body)
    max_tokens = body.max_completion_tokens or body.max_tokens
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    service_class = service_class_of(request, body)
    handoff = handoff_of(body.kv_transfer_params, body.n, body.stream)
    resume = resume_of(body, body.n)
    jobs = [Job(i, 0, prompt_ids, sampling_params(body, max_tokens, logprobs, i, service_class), f"{response_id}-{i}",
                handoff if i == 0 else None, resume) for i in range(body.n)]
    token_ids = body.return_token_ids
    if body.stream:
        first, stream = await start_stream(request, state, jobs)
        header = {"id": response_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        opening = {"prompt_token_ids": prompt_ids} if token_ids and resume is None else None
        return EventStreamResponse(completion_events(state, jobs, first, stream, body.stream_options, header,
                                                     _render_chat_choice(state, logprobs is not None, token_ids),
                                                     opening), resumed_headers(jobs))
    choices = await collect(request, state, jobs)
    response = ChatCompletionResponse(
        id=response_id, model=model,
        choices=[ChatChoice(index=c.job.choice, message=AssistantMessage(content=c.text),
                            logprobs=chat_logprobs(c.logprobs, state.token_text) if logprobs is not None else None,
                            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                            token_ids=c.token_ids if token_ids else None) for c in choices],
        usage=usage_of(choices), prompt_token_ids=prompt_ids if token_ids else None,
        kv_transfer_params=exported_params(request, handoff, choices))
    return JSONResponse(response.model_dump(), headers=resumed_headers(jobs))


def _render_chat_choice(state: ServerState, wants_logprobs: bool, token_ids: bool) -> RenderChoice:
    def render(choice: ChoiceState, out: RequestOutput, is_first: bool) -> list[dict]:
        index = choice.job.choice
        entries = []
        if is_first:  # OpenAI opens every choice with the role and empty content
            entries.append({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})
        if out.new_text or out.new_logprobs or out.finished or (token_ids and out.new_token_ids):
            entry = {"index": index, "delta": {"content": out.new_text} if out.new_text else {},
                     "logprobs": (chat_logprobs(out.new_logprobs, state.token_text).model_dump()
                                  if wants_logprobs else None),
                     "finish_reason": out.finish_reason if out.finished else None}
            if out.finished:
                entry["stop_reason"] = out.stop_reason
            if token_ids:
                entry["token_ids"] = out.new_token_ids
            entries.append(entry)
        return entries
    return render
