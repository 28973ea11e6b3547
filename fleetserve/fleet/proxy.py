"""Forwarding one request: pick a replica, send the body unchanged, pass the answer through as bytes.

Nothing reaches the client until the chosen replica has sent its first body byte, so until then any
failure (refused or dropped connection, 429/502/503/504) is retried on another replica, up to
`max_attempts`. A stream is then relayed chunk by chunk as it arrives, with no re-serialisation; if the
replica fails mid-stream, the stream ends with an OpenAI error event and `data: [DONE]`, and the failure
is counted. Non-streamed answers are read whole first, so they can be retried at any point.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetserve.api.errors import APIError, error_body
from fleetserve.fleet.health import describe_error
from fleetserve.fleet.policies import NoHealthyReplica
from fleetserve.fleet.replicas import Replica, Ticket
from fleetserve.fleet.request_info import RoutedCall

if TYPE_CHECKING:
    from fleetserve.fleet.router_state import RouterState

RETRY_STATUSES = {429, 502, 503, 504}
REPLICA_HEADER = "x-fleetserve-replica"
# Headers that describe one hop, not the message; httpx and uvicorn set their own.
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
                "upgrade", "proxy-authorization", "proxy-authenticate", "accept-encoding", "content-encoding"}
_DONE = b"data: [DONE]\n\n"


def upstream_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}


def downstream_headers(response: httpx.Response, replica: Replica) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
    headers[REPLICA_HEADER] = replica.replica_id
    return headers


def mid_stream_error(replica: Replica, exc: BaseException) -> bytes:
    body = error_body(503, f"the replica {replica.replica_id} ({replica.url}) failed mid-stream "
                           f"({describe_error(exc)}); the answer is incomplete, retry the request",
                      None, "replica_failed")
    return f"data: {json.dumps(body)}\n\n".encode() + _DONE


class RelayResponse(StreamingResponse):
    """Relays an upstream SSE stream. Whatever way the client's side ends (done, error, disconnect), the
    upstream response is closed and the replica's load released, outside any cancelled scope."""

    def __init__(self, router: RouterState, replica: Replica, ticket: Ticket, upstream: httpx.Response,
                 chunks: AsyncIterator[bytes], first: bytes) -> None:
        self.router = router
        self.replica = replica
        self.ticket = ticket
        self.upstream = upstream
        self.chunks = chunks
        self.first = first
        super().__init__(self._relay(), status_code=upstream.status_code,
                         headers=downstream_headers(upstream, replica))

    async def _relay(self) -> AsyncIterator[bytes]:
        replica, ticket = self.replica, self.ticket
        chunk = self.first
        replica.progress(ticket, chunk.count(b"data:"))
        yield chunk
        tail = chunk
        try:
            async for chunk in self.chunks:
                replica.progress(ticket, chunk.count(b"data:"))
                tail = chunk
                yield chunk
        except httpx.HTTPError as exc:
            self.router.stream_failed(replica, exc)
            # Start a fresh event even if the replica died halfway through one.
            yield (b"" if tail.endswith(b"\n\n") else b"\n\n") + mid_stream_error(replica, exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.replica.finish(self.ticket)
            await self.upstream.aclose()


def _no_replica(router: RouterState, call: RoutedCall, failures: list[str]) -> APIError:
    retry_after = str(router.config.retry_after_s)
    if failures:
        message = (f"no replica could take the request after {len(failures)} attempt(s): {'; '.join(failures)}; "
                   f"retry after {retry_after}s")
    else:
        message = f"no healthy replica{router.model_clause(call.model)}: {router.describe_unhealthy()}; " \
                  f"retry after {retry_after}s"
    return APIError(503, message, None, "no_healthy_replica", {"Retry-After": retry_after})


async def forward(router: RouterState, request: Request, path: str, raw_body: bytes, call: RoutedCall,
                  policy_name: str) -> Response:
    headers = upstream_headers(request)
    tried: set[str] = set()
    failures: list[str] = []
    last_refusal: tuple[httpx.Response, bytes, Replica] | None = None
    for _ in range(router.config.max_attempts):
        try:
            replica, cached_tokens = router.choose(call, policy_name, tried, request.headers)
        except NoHealthyReplica:
            break
        tried.add(replica.replica_id)
        ticket = replica.begin(max(call.prompt_tokens - cached_tokens, 0), call.max_output_tokens, time.monotonic())
        upstream_request = router.client.build_request("POST", replica.url + path, content=raw_body, headers=headers)
        try:
            upstream = await router.client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            replica.finish(ticket)
            failures.append(f"{replica.replica_id}: {describe_error(exc)}")
            router.attempt_failed(replica, exc, "connect")
            continue
        if upstream.status_code in RETRY_STATUSES:
            body = await _read_quietly(upstream)
            replica.finish(ticket)
            failures.append(f"{replica.replica_id}: HTTP {upstream.status_code} {body[:200]!r}")
            router.attempt_refused(replica, upstream.status_code)
            last_refusal = (upstream, body, replica)
            continue
        if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                body = await upstream.aread()
            except httpx.HTTPError as exc:
                replica.finish(ticket)
                await upstream.aclose()
                failures.append(f"{replica.replica_id}: {describe_error(exc)}")
                router.attempt_failed(replica, exc, "read")
                continue
            replica.first_byte(ticket, time.monotonic(), learn_speed=False)
            replica.finish(ticket)
            await upstream.aclose()
            return Response(body, upstream.status_code, headers=downstream_headers(upstream, replica))
        chunks = upstream.aiter_raw()
        try:
            first = await chunks.__anext__()
        except (httpx.HTTPError, StopAsyncIteration) as exc:
            replica.finish(ticket)
            await upstream.aclose()
            failures.append(f"{replica.replica_id}: stream ended before its first byte ({describe_error(exc)})")
            router.attempt_failed(replica, exc, "first_byte")
            continue
        replica.first_byte(ticket, time.monotonic())
        return RelayResponse(router, replica, ticket, upstream, chunks, first)
    if last_refusal is not None:
        upstream, body, replica = last_refusal
        return Response(body, upstream.status_code, headers=downstream_headers(upstream, replica))
    raise _no_replica(router, call, failures)


async def _read_quietly(upstream: httpx.Response) -> bytes:
    try:
        return await upstream.aread()
    except httpx.HTTPError:
        return b""
    finally:
        await upstream.aclose()
