"""From one HTTP request to its engine requests and back: fan-out (n samples x prompts), merging the
streams, turning engine exceptions into API errors, and noticing a client that went away.

Every engine request is consumed by its own task; closing the merged stream cancels those tasks, which
closes the engine's async generators, which aborts the requests and frees their KV blocks at once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, TypeVar

from starlette.requests import Request

from fleetserve.api.errors import ClientDisconnected
from fleetserve.api.kv_transfer import Handoff, fetch_prefilled, response_params
from fleetserve.api.protocol import PromptTokensDetails, Usage
from fleetserve.engine.outputs import RequestOutput, TokenLogprob
from fleetserve.engine.sampling_params import ONLINE, InvalidRequestError, SamplingParams
from fleetserve.wire.errors import APIError, bad_request, queue_full, unavailable
from fleetserve.wire.service_class import service_class_of as wire_service_class
from fleetserve.wire.stream_resume import RESUME_TOKEN_IDS, RESUMED_HEADER

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState
    from fleetserve.engine.async_engine import AsyncLLMEngine

T = TypeVar("T")
_END = object()
# As in vLLM: below this a temperature divides the logits into overflow (the sampler then fails on inf/nan),
# and it is greedy in all but name anyway.
MIN_TEMPERATURE = 1e-2


@dataclass
class Job:
    """One engine request: a prompt and one sample's parameters; `choice` is its index in the response."""
    choice: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    handoff: Handoff | None = None  # its part in a disaggregated prefill (fleetserve.api.kv_transfer)
    resume_token_ids: list[int] | None = None  # the output so far of a generation it continues


@dataclass
class ChoiceState:
    """What a choice has produced so far; built from deltas only (an output's token_ids keeps growing). A
    resumed choice has begun already: its resumed tokens count, and its opening was sent where it began."""
    job: Job
    text: str = ""
    num_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)  # those this answer adds
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    started: bool = False
    first_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.job.resume_token_ids is not None:
            self.num_tokens = len(self.job.resume_token_ids)
            self.started = True

    def add(self, out: RequestOutput) -> None:
        if self.first_token_id is None and out.new_token_ids:
            self.first_token_id = out.new_token_ids[0]
        self.text += out.new_text
        self.num_tokens += len(out.new_token_ids)
        self.token_ids.extend(out.new_token_ids)
        self.logprobs.extend(out.new_logprobs)
        self.num_cached_tokens = out.num_cached_tokens
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason


def usage_of(choices: list[ChoiceState]) -> Usage:
    """Each prompt counts once however many samples share it; its cached tokens are those every sample
    found cached (samples submitted together may all miss)."""
    prompt_tokens: dict[int, int] = {}
    cached_tokens: dict[int, int] = {}
    for choice in choices:
        index = choice.job.prompt_index
        prompt_tokens[index] = len(choice.job.prompt_ids)
        cached_tokens[index] = min(cached_tokens.get(index, choice.num_cached_tokens), choice.num_cached_tokens)
    prompt = sum(prompt_tokens.values())
    completion = sum(c.num_tokens for c in choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached_tokens.values())))


def exported_params(request: Request, handoff: Handoff | None, choices: list[ChoiceState]) -> dict[str, Any] | None:
    """The kv_transfer_params of a prefill request's response (None for any other request)."""
    if handoff is None or not handoff.export or choices[0].first_token_id is None:
        return None
    job = choices[0].job
    return response_params(request, job.request_id, job.prompt_ids, choices[0].first_token_id)


def translate_engine_error(exc: BaseException) -> APIError:
    from fleetserve.api.state import EngineStopped
    from fleetserve.engine.async_engine import EngineDeadError, EngineShuttingDownError, QueueFullError
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineStopped):
        return unavailable("the server shut down before the request finished; retry it on another replica")
    if isinstance(exc, InvalidRequestError):
        return bad_request(str(exc), exc.param)
    if isinstance(exc, EngineShuttingDownError):
        return unavailable("the server is shutting down and accepts no new requests; use another replica")
    if isinstance(exc, QueueFullError):
        return queue_full(str(exc))
    if isinstance(exc, EngineDeadError):
        return APIError(500, f"{exc}; the server must be restarted", None, "engine_dead")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", None, None)


def aborted_error(choice: ChoiceState, aengine: AsyncLLMEngine) -> APIError:
    reason = "the server is shutting down" if not aengine.accepting else "the engine aborted it"
    return unavailable(f"request {choice.job.request_id} was aborted after {choice.num_tokens} tokens: "
                       f"{reason}; retry it")


async def merge_streams(state: ServerState, jobs: list[Job]) -> AsyncIterator[tuple[Job, RequestOutput]]:
    """Yields (job, output) from all jobs as they come; raises the first engine error of any job."""
    aengine = state.require_engine()
    merged: asyncio.Queue = asyncio.Queue()
    state.open_streams.add(merged)

    async def pump(job: Job) -> None:
        try:
            handoff = job.handoff
            prefilled = None
            if handoff is not None and handoff.remote is not None:
                wants_logprobs = job.params.logprobs is not None
                prefilled = await fetch_prefilled(state, handoff.remote, job.prompt_ids, wants_logprobs)
            async for out in aengine.generate(job.prompt_ids, job.params, job.request_id,
                                              export_kv=handoff is not None and handoff.export, prefilled=prefilled,
                                              resume_token_ids=job.resume_token_ids):
                merged.put_nowait((job, out))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            merged.put_nowait(exc)
        finally:
            merged.put_nowait(_END)

    tasks = [asyncio.create_task(pump(job)) for job in jobs]
    remaining = len(tasks)
    try:
        while remaining:
            item = await merged.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        state.open_streams.discard(merged)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so aborting its engine requests) if the client goes away first."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
        await asyncio.gather(watcher, work_task, return_exceptions=True)


async def start_stream(request: Request, state: ServerState,
                       jobs: list[Job]) -> tuple[tuple[Job, RequestOutput], AsyncIterator[tuple[Job, RequestOutput]]]:
    """Submit the jobs and wait for the first output, so that refusals (bad input, full queue) become a
    plain HTTP error instead of an error inside a stream that has already said 200."""
    state.require_engine()  # a replica that is loading or stopping answers its own error, not a translated one
    stream = merge_streams(state, jobs)
    try:
        first = await unless_disconnected(request, stream.__anext__())
    except BaseException as exc:
        await stream.aclose()
        if isinstance(exc, (ClientDisconnected, asyncio.CancelledError)):
            raise
        raise translate_engine_error(exc) from exc
    return first, stream


async def collect(request: Request, state: ServerState, jobs: list[Job]) -> list[ChoiceState]:
    aengine = state.require_engine()
    choices = [ChoiceState(job) for job in jobs]

    async def run() -> None:
        stream = merge_streams(state, jobs)
        try:
            async for job, out in stream:
                choices[job.choice].add(out)
        finally:
            await stream.aclose()

    try:
        await unless_disconnected(request, run())
    except (ClientDisconnected, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise translate_engine_error(exc) from exc
    for choice in choices:
        if choice.finish_reason == "abort":
            raise aborted_error(choice, aengine)
    return choices


def resume_of(body: Any, num_choices: int) -> list[int] | None:
    """The body's resume_token_ids, refused unless the answer has one choice to continue."""
    if body.resume_token_ids is None:
        return None
    if num_choices != 1:
        raise bad_request(f"resume_token_ids continues one generation, so it needs n=1 and one prompt; this "
                          f"request has {num_choices} choices", RESUME_TOKEN_IDS)
    if body.kv_transfer_params is not None:
        raise bad_request("resume_token_ids cannot be combined with kv_transfer_params: a resumed generation "
                          "computes its prompt and output here; drop one of them", RESUME_TOKEN_IDS)
    return body.resume_token_ids


def resumed_headers(jobs: list[Job]) -> dict[str, str]:
    """The header that says an answer continued a generation (fleetserve.wire.stream_resume)."""
    resumed = jobs[0].resume_token_ids if len(jobs) == 1 else None
    return {} if resumed is None else {RESUMED_HEADER: str(len(resumed))}


def service_class_of(request: Request, body: Any) -> str:
    return wire_service_class(body.service_class, body.service_tier, request.headers)


def sampling_params(body: Any, max_tokens: int | None, logprobs: int | None, sample: int,
                    service_class: str = ONLINE) -> SamplingParams:
    """One sample's SamplingParams; sample i of n gets seed+i so the n choices differ but repeat."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise bad_request(f"{name}={getattr(body, name)!r} is not supported by this server; send 0 or omit it",
                              name)
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by this server; omit it", "logit_bias")
    temperature = 1.0 if body.temperature is None else body.temperature
    if 0 < temperature < MIN_TEMPERATURE:
        temperature = MIN_TEMPERATURE
    try:
        return SamplingParams(
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=-1 if body.top_k is None else body.top_k,
            seed=None if body.seed is None else body.seed + sample,
            max_tokens=max_tokens, min_tokens=body.min_tokens, stop=body.stop or [],
            stop_token_ids=body.stop_token_ids or [], ignore_eos=body.ignore_eos, logprobs=logprobs,
            priority=body.priority, service_class=service_class)
    except InvalidRequestError as exc:
        raise bad_request(str(exc), exc.param) from exc
