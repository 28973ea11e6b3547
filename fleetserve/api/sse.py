"""Server-sent events: `data: {json}\\n\\n` frames ending with `data: [DONE]`; the one loop that turns the
merged engine outputs of a request into chunks (chat and completions differ only in how a chunk's choice
looks); and a response that always closes its event generator, so a client that leaves mid-stream
releases what the stream holds."""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetserve.api.generation import ChoiceState, Job, aborted_error, translate_engine_error, usage_of
from fleetserve.api.protocol import StreamOptions
from fleetserve.engine.outputs import RequestOutput
from fleetserve.wire.errors import APIError, sse_error_event

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState

DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Given a choice (already updated with the output), the output, and whether it is the choice's first:
# the choice entries to send, one chunk each.
RenderChoice = Callable[[ChoiceState, RequestOutput, bool], list[dict]]


def sse_event(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def completion_events(state: ServerState, jobs: list[Job], first: tuple[Job, RequestOutput],
                            stream: AsyncIterator[tuple[Job, RequestOutput]], options: StreamOptions | None,
                            header: dict, render: RenderChoice, opening: dict | None = None) -> AsyncIterator[str]:
    """Chunks `{**header, "choices": [entry]}`, the first of them with `opening`'s fields too; with
    include_usage every chunk carries "usage" (null but the last, which has no choices), or real usage in each
    with continuous_usage_stats (vLLM)."""
    choices = [ChoiceState(job) for job in jobs]
    include_usage = bool(options and options.include_usage)
    continuous_usage = include_usage and bool(options and options.continuous_usage_stats)

    def chunk(entry: dict | None) -> str:
        nonlocal opening
        payload = {**header, "choices": [entry] if entry is not None else []}
        if opening:
            payload.update(opening)
            opening = None
        if include_usage:
            payload["usage"] = usage_of(choices).model_dump() if continuous_usage or entry is None else None
        return sse_event(payload)

    async def outputs() -> AsyncIterator[tuple[Job, RequestOutput]]:
        yield first
        async for item in stream:
            yield item

    try:
        async for job, out in outputs():
            choice = choices[job.choice]
            is_first = not choice.started
            choice.started = True
            choice.add(out)
            if out.finish_reason == "abort":
                yield sse_error_event(aborted_error(choice, state.aengine))
                break
            for entry in render(choice, out, is_first):
                yield chunk(entry)
        else:
            if include_usage:
                yield chunk(None)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the stream already said 200; the error travels inside it
        yield sse_error_event(exc if isinstance(exc, APIError) else translate_engine_error(exc))
    finally:
        await stream.aclose()
    yield DONE


class EventStreamResponse(StreamingResponse):
    def __init__(self, events: AsyncIterator[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(events, media_type="text/event-stream", headers={**HEADERS, **(headers or {})})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Starlette cancels the sending task on disconnect; if that happened between two events the
            # generator is suspended at a yield and would only be finalised by the garbage collector.
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
