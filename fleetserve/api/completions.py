"""POST /v1/completions: one or many prompts (text or token ids), n samples each, echo, logprobs."""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

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
from fleetserve.api.logprobs import completion_logprobs
from fleetserve.api.protocol import CompletionChoice, CompletionRequest, CompletionResponse
from fleetserve.api.sse import EventStreamResponse, RenderChoice, completion_events
from fleetserve.engine.outputs import RequestOutput
from fleetserve.wire.errors import bad_request

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState


def split_prompts(prompt: str | list) -> list[str | list[int]]:
    """The four OpenAI prompt forms, as a list of single prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt or isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def tokenize_prompts(state: ServerState, prompts: list[str | list[int]], echo: bool) -> list[tuple[list[int], str]]:
    """(token ids, text to echo: the prompt's own text when echo is on, else "") for each prompt."""
    tokenized = []
    for prompt in prompts:
        if isinstance(prompt, str):
            tokenized.append((state.tokenizer.encode(prompt), prompt if echo else ""))
        else:
            if echo:
                # Decoding comes before the engine's own checks, so an id it cannot decode is refused here.
                vocab = state.tokenizer.vocab_size
                bad = next((t for t in prompt if not 0 <= t < vocab), None)
                if bad is not None:
                    raise bad_request(f"prompt token id {bad} is outside the vocabulary [0, {vocab})", "prompt")
            tokenized.append((list(prompt), state.tokenizer.decode(list(prompt)) if echo else ""))
    return tokenized


def refuse_unsupported(body: CompletionRequest) -> None:
    if body.suffix:
        raise bad_request("suffix is not supported by this server; omit it", "suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request(f"best_of={body.best_of} different from n={body.n} is not supported; omit best_of",
                          "best_of")
    if body.echo and body.logprobs is not None:
        raise bad_request("echo together with logprobs would need prompt logprobs, which this server does not "
                          "compute; drop one of them", "echo")


async def create_completion(state: ServerState, request: Request, body: CompletionRequest) -> Response:
    state.require_engine()
    model = state.resolve_model(body.model)
    refuse_unsupported(body)
    prompts = await asyncio.to_thread(tokenize_prompts, state, split_prompts(body.prompt), body.echo)
    response_id = f"cmpl-{uuid.uuid4().hex}"
    jobs = []
    service_class = service_class_of(request, body)
    handoff = handoff_of(body.kv_transfer_params, len(prompts) * body.n, body.stream)
    resume = resume_of(body, len(prompts) * body.n)
    for p, (ids, _) in enumerate(prompts):
        for i in range(body.n):
            choice = p * body.n + i
            jobs.append(Job(choice, p, ids, sampling_params(body, body.max_tokens, body.logprobs, i, service_class),
                            f"{response_id}-{choice}", handoff if choice == 0 else None, resume))
    # A resumed generation's echo went out where it began.
    echoes = ["" if resume is not None else echo for _, echo in prompts]
    token_ids = body.return_token_ids
    if body.stream:
        first, stream = await start_stream(request, state, jobs)
        header = {"id": response_id, "object": "text_completion", "created": int(time.time()), "model": model}
        render = _render_completion_choice(state, body.logprobs is not None, echoes, token_ids)
        return EventStreamResponse(completion_events(state, jobs, first, stream, body.stream_options, header,
                                                     render), resumed_headers(jobs))
    choices = await collect(request, state, jobs)
    response = CompletionResponse(
        id=response_id, model=model,
        choices=[CompletionChoice(
            index=c.job.choice, text=echoes[c.job.prompt_index] + c.text,
            logprobs=(completion_logprobs(c.logprobs, state.token_text, _resumed_text_length(state, c.job))
                      if body.logprobs is not None else None),
            finish_reason=c.finish_reason, stop_reason=c.stop_reason,
            prompt_token_ids=c.job.prompt_ids if token_ids else None,
            token_ids=c.token_ids if token_ids else None) for c in choices],
        usage=usage_of(choices), kv_transfer_params=exported_params(request, handoff, choices))
    return JSONResponse(response.model_dump(), headers=resumed_headers(jobs))


def _resumed_text_length(state: ServerState, job: Job) -> int:
    """Where a resumed generation's logprobs text offsets go on from: the length of its resumed tokens' text."""
    return sum(len(state.token_text.text_of(t)) for t in job.resume_token_ids or ())


def _render_completion_choice(state: ServerState, wants_logprobs: bool, echoes: list[str],
                              token_ids: bool) -> RenderChoice:
    text_offsets: dict[int, int] = {}

    def render(choice: ChoiceState, out: RequestOutput, is_first: bool) -> list[dict]:
        index = choice.job.choice
        text = echoes[choice.job.prompt_index] + out.new_text if is_first else out.new_text
        if not (text or out.new_logprobs or out.finished or (token_ids and out.new_token_ids)):
            return []
        logprobs = None
        if wants_logprobs:
            if index not in text_offsets:
                text_offsets[index] = _resumed_text_length(state, choice.job)
            entries = completion_logprobs(out.new_logprobs, state.token_text, text_offsets[index])
            text_offsets[index] += sum(len(t) for t in entries.tokens)
            logprobs = entries.model_dump()
        entry = {"index": index, "text": text, "logprobs": logprobs,
                 "finish_reason": out.finish_reason if out.finished else None}
        if out.finished:
            entry["stop_reason"] = out.stop_reason
        if token_ids:
            if is_first:
                entry["prompt_token_ids"] = choice.job.prompt_ids
            entry["token_ids"] = out.new_token_ids
        return [entry]
    return render
