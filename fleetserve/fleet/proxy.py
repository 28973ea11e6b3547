"""Forwarding one request: pick a replica, send the body unchanged (but for the `kv_transfer_params` a
prefill hand-off adds: fleetserve.fleet.prefill_handoff), pass the answer through as bytes.

Nothing reaches the client until the chosen replica has sent its first body byte, so until then any
failure (refused or dropped connection, 429/502/503/504) is retried on another replica, up to
`max_attempts`. A stream is then relayed chunk by chunk as it arrives, with no re-serialisation; if the
replica fails mid-stream, the stream ends with an OpenAI error event and `data: [DONE]`, and the failure
is counted. Non-streamed answers are read whole first, so they can be retried at any point.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetserve.fleet.policy_basics import NoHealthyReplica
from fleetserve.fleet.prefill_handoff import PrefillHandoff
from fleetserve.fleet.replicas import Replica, Ticket
from fleetserve.fleet.request_info import RoutedCall
from fleetserve.wire.errors import APIError, describe_error, error_body

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


def _last_event_end(data: bytes) -> int:
    """The end of the last complete server-sent event in `data` (0 when there is none)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


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
        """Whole events only: a replica that dies halfway through an event must not leave the client a
        broken line before the error event. Bytes go out as they came, cut only at event boundaries."""
        replica, ticket = self.replica, self.ticket
        pending = b""
        try:
            async for chunk in _chain([self.first], self.chunks):
                data = pending + chunk if pending else chunk
                cut = _last_event_end(data)
                pending = data[cut:]
                if cut:
                    replica.progress(ticket, data.count(b"data:", 0, cut))
                    yield data[:cut]
            if pending:
                yield pending
        except httpx.HTTPError as exc:
            self.router.stream_failed(replica, exc)
            yield mid_stream_error(replica, exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.router.request_ended(self.replica, self.ticket)
            await self.upstream.aclose()


def _no_replica(router: RouterState, call: RoutedCall, failures: list[str]) -> APIError:
    retry_after = str(router.config.retry_after_s)
    no_decoder = router.describe_no_decoder(call.model)
    if failures:
        message = (f"no replica could take the request after {len(failures)} attempt(s): {'; '.join(failures)}; "
                   f"retry after {retry_after}s")
    elif no_decoder is not None:
        message = f"no replica can decode the request: {no_decoder}"
    else:
        message = f"no healthy replica{router.model_clause(call.model)}: {router.describe_unhealthy()}; " \
                  f"retry after {retry_after}s"
    return APIError(503, message, None, "no_healthy_replica", {"Retry-After": retry_after})


@dataclass
class Answer:
    """What an attempt got before anything went to the client: a whole body, or a stream's first chunk."""
    upstream: httpx.Response
    body: bytes | None = None
    first_chunk: bytes | None = None
    chunks: AsyncIterator[bytes] | None = None


class ReplicaEjected(Exception):
    """The replica was ejected (it stopped answering health checks) while this attempt waited on it."""


async def _until_first_byte(router: RouterState, replica: Replica, path: str, raw_body: bytes,
                            headers: dict[str, str]) -> Answer:
    request = router.client.build_request("POST", replica.url + path, content=raw_body, headers=headers)
    upstream = await router.client.send(request, stream=True)
    try:
        if upstream.status_code in RETRY_STATUSES or not upstream.headers.get("content-type", "").startswith(
                "text/event-stream"):
            body = await upstream.aread()
            await upstream.aclose()
            return Answer(upstream, body=body)
        chunks = upstream.aiter_raw()
        return Answer(upstream, first_chunk=await chunks.__anext__(), chunks=chunks)
    except BaseException:
        await upstream.aclose()
        raise


async def _attempt(router: RouterState, replica: Replica, path: str, raw_body: bytes,
                   headers: dict[str, str]) -> Answer:
    """Wait for the replica's first byte, unless the replica is ejected first."""
    attempt = asyncio.ensure_future(_until_first_byte(router, replica, path, raw_body, headers))
    ejected = asyncio.ensure_future(router.ejection_of(replica).wait())
    try:
        await asyncio.wait({attempt, ejected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ejected.cancel()
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
    if attempt.cancelled():
        raise ReplicaEjected(f"the replica was ejected ({replica.last_error}) before it answered")
    return attempt.result()


async def forward(router: RouterState, request: Request, path: str, raw_body: bytes, call: RoutedCall,
                  policy_name: str) -> Response:
    headers = upstream_headers(request)
    handoff = PrefillHandoff(router, path, raw_body, headers, call)
    tried: set[str] = set()
    failures: list[str] = []
    last_refusal: tuple[Answer, Replica] | None = None
    if call.offline:
        await router.hold_offline(call)
    for _ in range(router.config.max_attempts):
        try:
            routing = router.choose(call, policy_name, tried, request.headers)
        except NoHealthyReplica:
            break
        replica = routing.replica
        tried.add(replica.replica_id)
        ticket = await handoff.begin(routing)
        try:
            answer = await _attempt(router, replica, path, handoff.body, headers)
        except (httpx.HTTPError, StopAsyncIteration, ReplicaEjected) as exc:
            router.request_ended(replica, ticket)
            failures.append(f"{replica.replica_id}: {describe_error(exc)}")
            router.attempt_failed(replica, exc, _stage_of(exc))
            continue
        except BaseException:
            router.request_ended(replica, ticket)
            raise
        upstream = answer.upstream
        if answer.body is not None:
            replica.first_byte(ticket, time.monotonic(), learn_speed=False)
            router.request_ended(replica, ticket)
            if upstream.status_code in RETRY_STATUSES:
                failures.append(f"{replica.replica_id}: HTTP {upstream.status_code} {answer.body[:200]!r}")
                router.attempt_refused(replica, upstream.status_code)
                last_refusal = (answer, replica)
                continue
            return Response(answer.body, upstream.status_code, headers=downstream_headers(upstream, replica))
        assert answer.first_chunk is not None and answer.chunks is not None
        replica.first_byte(ticket, time.monotonic())
        return RelayResponse(router, replica, ticket, upstream, answer.chunks, answer.first_chunk)
    if last_refusal is not None:
        answer, replica = last_refusal
        return Response(answer.body, answer.upstream.status_code,
                        headers=downstream_headers(answer.upstream, replica))
    raise _no_replica(router, call, failures)


def _stage_of(exc: BaseException) -> str:
    if isinstance(exc, ReplicaEjected):
        return "ejected"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connect"
    return "before_first_byte"
