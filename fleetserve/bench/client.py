"""The open-loop load generator: sends each request of a workload at its scheduled time to an
OpenAI-compatible server, streams the answer and records when every token arrived.

Open loop means arrivals never wait for answers: every request is its own asyncio task, started at its
`arrival_s` (seconds after the replay starts). With `max_concurrency` a semaphore caps the requests in
flight, and the wait for it shows up as send lag (`sent_s - arrival_s`); all latencies count from
`sent_s`.

A token event is a streamed chunk carrying text (completions `text`, chat `delta.content`); chunks with
only a role, only a finish reason or only usage are not tokens. (vLLM's client also times role-only chat
chunks, which makes its chat TTFT look shorter.) The output token count comes from the final usage block
when the server sends one, else it is the number of token events.

Failures carry an `error_kind`: `http_status_XXX` (the server answered with status XXX), `timeout` (no
complete answer within `timeout_s` of sending), `connection` (no response: refused, reset before the
headers), `stream_error` (the stream broke after it began: dropped connection, a chunk that is not JSON,
an error event, no text at all, or an end without `[DONE]` or a finish reason).
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import httpx

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.sampling_params import ONLINE
from fleetserve.wire.model_probe import ModelProbeError, probe_models
from fleetserve.wire.paths import GENERATION_PATHS
from fleetserve.wire.urls import InvalidServerURL, server_root
from fleetserve.workload.spec import RequestSpec, Workload

MODELS_CHECK_TIMEOUT_S = 10.0
_ERROR_BODY_CHARS = 300

Clock = Callable[[], float]


class ServerUnreachableError(ValueError):
    """The benchmark target does not answer GET /v1/models like an OpenAI-compatible server."""


class _StreamBroken(Exception):
    pass


@dataclass(frozen=True)
class ClientOptions:
    endpoint: str = "completions"
    model: str | None = None
    ignore_eos: bool = True
    timeout_s: float = 600.0
    max_concurrency: int | None = None
    stop_after_s: float | None = None
    send_token_ids: bool = True

    def __post_init__(self) -> None:
        if self.endpoint not in GENERATION_PATHS:
            raise ValueError(f"endpoint {self.endpoint!r} is not one of {sorted(GENERATION_PATHS)}")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.stop_after_s is not None and not self.stop_after_s > 0:
            raise ValueError(f"duration must be a positive number of seconds, got {self.stop_after_s}")


def normalize_url(url: str) -> str:
    """The server root (people often paste an OpenAI base_url); raises ServerUnreachableError."""
    try:
        return server_root(url)
    except InvalidServerURL as error:
        raise ServerUnreachableError(str(error)) from None


async def list_models(url: str, timeout_s: float = MODELS_CHECK_TIMEOUT_S) -> list[str]:
    """The model ids served at `url`, from GET /v1/models; raises ServerUnreachableError naming the URL."""
    root = normalize_url(url)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await probe_models(client, root, timeout_s)
    except ModelProbeError as error:
        raise ServerUnreachableError(str(error)) from None


async def resolve_model_name(url: str, model: str | None) -> tuple[str, list[str]]:
    """(the model to ask for, every model served); checks the server is reachable either way."""
    served = await list_models(url)
    if model is not None:
        return model, served
    if not served:
        raise ServerUnreachableError(f"the server at {url} lists no models at /v1/models; pass --model NAME")
    return served[0], served


def request_body(spec: RequestSpec, model: str, options: ClientOptions) -> dict[str, Any]:
    """The JSON body for one streaming request; token ids are sent when the spec has them, so the server
    sees exactly the intended prompt length regardless of how it would tokenize the text."""
    body: dict[str, Any] = {"model": model, "max_tokens": spec.output_tokens, "temperature": 0,
                            "stream": True, "stream_options": {"include_usage": True}}
    if options.ignore_eos:
        body["ignore_eos"] = True
    # Sent only when set, so a server without these fields still takes a single-class workload.
    if spec.priority != 0:
        body["priority"] = spec.priority
    if spec.service_class != ONLINE:
        body["service_class"] = spec.service_class
    if options.endpoint == "chat":
        if spec.prompt is None:
            raise ValueError(f"request {spec.request_id!r} has no prompt text, which the chat endpoint needs; "
                             f"synthesize prompts first")
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    elif options.send_token_ids and spec.prompt_token_ids:
        body["prompt"] = list(spec.prompt_token_ids)
    elif spec.prompt is not None:
        body["prompt"] = spec.prompt
    else:
        raise ValueError(f"request {spec.request_id!r} has neither prompt text nor token ids; "
                         f"synthesize prompts first")
    return body


def _chunk_text(choice: dict[str, Any]) -> str:
    if "delta" in choice:
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""


def _fail(record: RequestRecord, kind: str, message: str, clock: Clock) -> None:
    record.success, record.error_kind, record.error = False, kind, message
    record.end_s = clock()


async def _read_stream(response: httpx.Response, record: RequestRecord, clock: Clock) -> None:
    usage: dict[str, Any] | None = None
    saw_done = saw_finish = False
    async for line in response.aiter_lines():
        line = line.strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            saw_done = True
            break
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            raise _StreamBroken(f"chunk is not JSON: {payload[:100]!r}") from None
        if not isinstance(event, dict):
            raise _StreamBroken(f"chunk is not a JSON object: {payload[:100]!r}")
        if event.get("error"):
            raise _StreamBroken(f"server sent an error mid-stream: {str(event['error'])[:_ERROR_BODY_CHARS]}")
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            if _chunk_text(choice):
                record.token_times_s.append(clock())
            if choice.get("finish_reason"):
                saw_finish = True
    record.end_s = clock()
    if not (saw_done or saw_finish):
        raise _StreamBroken("stream ended without [DONE] or a finish reason")
    if not record.token_times_s:
        raise _StreamBroken("stream carried no text")
    record.first_token_s = record.token_times_s[0]
    completion_tokens = (usage or {}).get("completion_tokens")
    record.output_tokens = completion_tokens if isinstance(completion_tokens, int) else len(record.token_times_s)
    prompt_tokens = (usage or {}).get("prompt_tokens")
    if isinstance(prompt_tokens, int) and prompt_tokens > 0:
        record.prompt_tokens = prompt_tokens


async def stream_request(client: httpx.AsyncClient, endpoint_url: str, body: dict[str, Any],
                         record: RequestRecord, clock: Clock, timeout_s: float) -> None:
    """Send one request and fill `record` with what happened; never raises for a failed request."""
    response_began = False

    async def exchange() -> None:
        nonlocal response_began
        async with client.stream("POST", endpoint_url, json=body) as response:
            response_began = True
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:_ERROR_BODY_CHARS]
                _fail(record, f"http_status_{response.status_code}", text, clock)
                return
            await _read_stream(response, record, clock)

    try:
        await asyncio.wait_for(exchange(), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException) as error:
        _fail(record, "timeout", f"no complete answer within {timeout_s:g} s ({type(error).__name__})", clock)
    except _StreamBroken as error:
        _fail(record, "stream_error", str(error), clock)
    except httpx.TransportError as error:
        kind = "stream_error" if response_began else "connection"
        _fail(record, kind, f"{type(error).__name__}: {error or 'no detail'}", clock)


class ReplayProgress:
    """A rich progress bar of completed, failed and in-flight requests (on stderr); inert when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.completed = self.failed = self.in_flight = 0
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self._progress = Progress(
                TextColumn("replay"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[green]{task.fields[ok]} ok [red]{task.fields[failed]} failed "
                           "[cyan]{task.fields[in_flight]} in flight"),
                TimeElapsedColumn(), console=Console(stderr=True))
            self._task = self._progress.add_task("replay", total=total, ok=0, failed=0, in_flight=0)

    def __enter__(self) -> ReplayProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def sent(self) -> None:
        self.in_flight += 1
        self._refresh(advance=0)

    def finished(self, success: bool) -> None:
        self.in_flight -= 1
        if success:
            self.completed += 1
        else:
            self.failed += 1
        self._refresh(advance=1)

    def skipped(self) -> None:
        self._refresh(advance=1)

    def _refresh(self, advance: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, ok=self.completed, failed=self.failed,
                                  in_flight=self.in_flight)


async def _issue(client: httpx.AsyncClient, endpoint_url: str, spec: RequestSpec, body: dict[str, Any],
                 options: ClientOptions, limit: AbstractAsyncContextManager, clock: Clock,
                 progress: ReplayProgress) -> RequestRecord | None:
    async with limit:
        sent_s = clock()
        if options.stop_after_s is not None and sent_s >= options.stop_after_s:
            progress.skipped()
            return None
        record = RequestRecord(spec.request_id, arrival_s=spec.arrival_s, sent_s=sent_s,
                               prompt_tokens=spec.prompt_tokens, service_class=spec.service_class,
                               priority=spec.priority)
        progress.sent()
        await stream_request(client, endpoint_url, body, record, clock, options.timeout_s)
        progress.finished(record.success)
        return record


async def replay(url: str, workload: Workload, options: ClientOptions | None = None,
                 progress: bool = False) -> list[RequestRecord]:
    """Send every request of `workload` open-loop and return one record per request actually sent.

    Times in the records are seconds since the replay began, the clock `arrival_s` is scheduled on.
    Requests scheduled at or after `options.stop_after_s`, or still waiting for a concurrency slot then,
    are never sent and have no record. Without `options.model` the model comes from GET /v1/models,
    which also checks the server is reachable before any load is sent.
    """
    options = options or ClientOptions()
    root = normalize_url(url)
    model = options.model if options.model is not None else (await resolve_model_name(root, None))[0]
    bodies = [request_body(spec, model, options) for spec in workload]
    endpoint_url = root + GENERATION_PATHS[options.endpoint]
    limit: AbstractAsyncContextManager = (asyncio.Semaphore(options.max_concurrency)
                                          if options.max_concurrency else nullcontext())
    # No pool limit: a queue inside httpx would delay sends invisibly instead of showing as send lag.
    # No proxies from the environment: they would add their own latency to every measurement.
    pool = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(options.timeout_s)
    with ReplayProgress(len(workload), progress) as display:
        async with httpx.AsyncClient(limits=pool, timeout=timeout, trust_env=False) as client:
            start = time.perf_counter()

            def clock() -> float:
                return time.perf_counter() - start

            tasks = []
            for spec, body in zip(workload, bodies):
                if options.stop_after_s is not None and spec.arrival_s >= options.stop_after_s:
                    display.skipped()
                    continue
                delay = spec.arrival_s - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(
                    _issue(client, endpoint_url, spec, body, options, limit, clock, display)))
            results = await asyncio.gather(*tasks)
    return [record for record in results if record is not None]
