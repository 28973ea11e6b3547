"""Forwarding one request: pick a replica, send the body unchanged (but for the `kv_transfer_params` a
prefill hand-off adds, fleetserve.fleet.prefill_handoff, and the `return_token_ids` a stream that may migrate
asks for), pass the answer through.

Nothing reaches the client until the chosen replica has sent its first body byte, so until then any
failure (refused or dropped connection, 429/502/503/504) is retried on another replica, up to
`max_attempts`. A stream with one choice is then relayed event by event, and if its replica fails mid-stream
it goes on from another replica (fleetserve.fleet.stream_migration). Any other stream is relayed chunk by
chunk as it arrives, with no re-serialisation; if its replica fails mid-stream, it ends with an OpenAI error
event and `data: [DONE]`, and the failure is counted. Non-streamed answers are read whole first, so they can
be retried at any point.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetserve.fleet.policy_basics import NoHealthyReplica
from fleetserve.fleet.prefill_handoff import PrefillHandoff
from fleetserve.fleet.replicas import Replica, Ticket
from fleetserve.fleet.request_info import RoutedCall
from fleetserve.fleet.stream_migration import Leg, MigratingRelay, Migration
from fleetserve.fleet.upstream import (
    RETRY_STATUSES,
    Answer,
    ReplicaEjected,
    attempt,
    downstream_headers,
    last_event_end,
    mid_stream_error,
    stage_of,
    upstream_headers,
)
from fleetserve.wire.errors import APIError, describe_error

if TYPE_CHECKING:
    from fleetserve.fleet.router_state import RouterState


async def _chain(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


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
                cut = last_event_end(data)
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


async def forward(router: RouterState, request: Request, path: str, raw_body: bytes, call: RoutedCall,
                  policy_name: str) -> Response:
    headers = upstream_headers(request)
    migration = Migration.of(call, raw_body)
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
            body = handoff.body if migration is None else migration.asking_for_token_ids(handoff.body)
            answer = await attempt(router, replica, path, body, headers)
        except (httpx.HTTPError, StopAsyncIteration, ReplicaEjected) as exc:
            router.request_ended(replica, ticket)
            failures.append(f"{replica.replica_id}: {describe_error(exc)}")
            router.attempt_failed(replica, exc, stage_of(exc))
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
        if migration is not None:
            return MigratingRelay(router, call, policy_name, path, headers, migration,
                                  Leg(replica, ticket, upstream, answer.chunks, answer.first_chunk))
        return RelayResponse(router, replica, ticket, upstream, answer.chunks, answer.first_chunk)
    if last_refusal is not None:
        answer, replica = last_refusal
        return Response(answer.body, answer.upstream.status_code,
                        headers=downstream_headers(answer.upstream, replica))
    raise _no_replica(router, call, failures)
