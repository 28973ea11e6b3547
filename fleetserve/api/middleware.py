"""Plain ASGI middleware (no BaseHTTPMiddleware: it would hide client disconnects from the handlers):
a request-body size limit, and admission during shutdown plus error accounting."""
from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetserve.wire.error_handlers import error_response
from fleetserve.wire.errors import APIError, bad_request, too_large, unavailable

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState

_METHODS_WITH_BODY = {"POST", "PUT", "PATCH"}


async def _reply(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)


class BodySizeLimit:
    """413 for a body beyond the limit: at once when Content-Length says so, otherwise as soon as the
    streamed (chunked) body crosses it. The accepted body is buffered and replayed to the app."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit = self.state.options.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(bad_request(f"Content-Length {declared[:40]!r} is not a byte count"), scope, receive,
                             send)
                return
            if int(declared) > limit:
                await _reply(too_large(int(declared), limit), scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await _reply(too_large(size, limit), scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Admission:
    """Counts requests in progress (shutdown waits for them), refuses new generation requests with 503
    while draining, and counts error responses for /metrics."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.state.draining and scope["method"] in _METHODS_WITH_BODY:
            await _reply(unavailable("the server is shutting down and accepts no new requests; use another "
                                     "replica"), scope, receive, send)
            self.state.metrics.count_error(503)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.state.metrics.count_error(message["status"])
            await send(message)

        self.state.active_requests += 1
        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.state.active_requests -= 1
