"""Request migration: a stream whose replica fails mid-way goes on from another replica, and the client sees
one uninterrupted stream (as Dynamo's request migration does).

A streamed request with one choice asks its replica for every chunk's output token ids (vLLM's
`return_token_ids`), and the router keeps those of the chunks it has relayed (fleetserve.fleet.relayed_stream).
When the replica fails mid-stream (the connection breaks, the stream ends before `data: [DONE]`, the replica
ends it with an error event that blames itself, or health checks eject it), the router sends the client's
body again to another replica chosen by the same routing, the failed ones excluded, with `resume_token_ids`
= the tokens relayed so far. That replica takes them as the request's output so far
(fleetserve.wire.stream_resume): it computes prompt and tokens as after a preemption, and goes on with the
same sampling (a seeded request's draws are keyed by output position), the same max_tokens and stop rules
across the boundary, and usage counting every token. Its chunks get the first stream's `id` and `created`.
A replica must confirm the resumption with the `x-fleetserve-resumed-tokens` header: an engine that ignored
the field would start over and repeat text the client has.

Continuations are tried on up to `max_attempts` replicas over the stream's life. A stream that cannot be
continued (its chunks carry no token ids, as from engines without `return_token_ids`; no replica left or
willing) ends as before, with an OpenAI error event and `data: [DONE]`. A stream whose finish was already
relayed only misses its `[DONE]`, which the router sends.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator

import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from fleetserve.fleet.policy_basics import NoHealthyReplica
from fleetserve.fleet.relayed_stream import RelayedStream
from fleetserve.fleet.replicas import Replica, Ticket
from fleetserve.fleet.request_info import RoutedCall
from fleetserve.fleet.upstream import (
    DONE,
    ReplicaEjected,
    attempt,
    downstream_headers,
    last_event_end,
    mid_stream_error,
)
from fleetserve.wire.errors import describe_error
from fleetserve.wire.stream_resume import RESUME_TOKEN_IDS, RESUMED_HEADER, RETURN_TOKEN_IDS

if TYPE_CHECKING:
    from fleetserve.fleet.router_state import RouterState

logger = logging.getLogger("fleetserve.fleet")


class StreamBroke(Exception):
    """The replica's stream ended before its end (no `data: [DONE]`), or the replica said it gave up."""


class NotResumed(Exception):
    """A replica answered a continuation without confirming that it resumed the generation."""


@dataclass
class Migration:
    """A request whose stream may be continued elsewhere, and the bodies its replicas get."""
    client_body: dict[str, Any]

    @classmethod
    def of(cls, call: RoutedCall, raw_body: bytes) -> Migration | None:
        """None for a request that cannot be continued: not streamed, or with several choices or prompts."""
        if not call.stream:
            return None
        body = json.loads(raw_body)
        prompt = body.get("prompt")
        several_prompts = isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int)
        if body.get("n", 1) != 1 or several_prompts:
            return None
        return cls(body)

    @staticmethod
    def asking_for_token_ids(body: bytes) -> bytes:
        """A body for the stream's first replica (the client's, or with a prefill hand-off's params)."""
        return json.dumps({**json.loads(body), RETURN_TOKEN_IDS: True}).encode()

    def relayed_stream(self) -> RelayedStream:
        return RelayedStream(bool(self.client_body.get(RETURN_TOKEN_IDS)), self.client_body.get(RESUME_TOKEN_IDS))

    def continuation_body(self, token_ids: list[int]) -> bytes:
        """The client's body, resumed after `token_ids`; a prefill hand-off's KV is not reused."""
        body = {key: value for key, value in self.client_body.items() if key != "kv_transfer_params"}
        body.update({RETURN_TOKEN_IDS: True, RESUME_TOKEN_IDS: token_ids})
        return json.dumps(body).encode()


@dataclass
class Leg:
    """One replica's part of a stream."""
    replica: Replica
    ticket: Ticket
    upstream: httpx.Response
    chunks: AsyncIterator[bytes]
    first: bytes | None


async def _chunks_until_ejected(router: RouterState, leg: Leg) -> AsyncGenerator[bytes, None]:
    """The leg's chunks as they come; raises ReplicaEjected if health checks eject its replica first."""
    if leg.first is not None:
        yield leg.first
    ejected = asyncio.ensure_future(router.ejection_of(leg.replica).wait())
    following: asyncio.Future | None = None
    try:
        while True:
            following = asyncio.ensure_future(leg.chunks.__anext__())
            # Closed while waiting (the client left, or the relay moved on): the read may still fail later.
            following.add_done_callback(_retrieve)
            await asyncio.wait({following, ejected}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                raise ReplicaEjected(f"the replica was ejected ({leg.replica.last_error}) mid-stream")
            try:
                chunk = following.result()
            except StopAsyncIteration:
                return
            yield chunk
    finally:
        ejected.cancel()
        if following is not None and not following.done():
            following.cancel()


def _retrieve(task: asyncio.Future) -> None:
    """Mark an abandoned read's failure as seen, so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


class MigratingRelay(StreamingResponse):
    """Relays an upstream SSE stream event by event, and continues it on another replica when its replica
    fails. Whatever way the client's side ends, the current upstream is closed and its replica's load
    released."""

    def __init__(self, router: RouterState, call: RoutedCall, policy_name: str, path: str, headers: dict[str, str],
                 migration: Migration, leg: Leg) -> None:
        self.router = router
        self.call = call
        self.policy_name = policy_name
        self.path = path
        self.request_headers = headers
        self.migration = migration
        self.failed: set[str] = set()  # replicas this stream broke on or that would not continue it
        self.leg = leg
        self.stream = migration.relayed_stream()
        self.continuations_left = router.config.max_attempts
        super().__init__(self._relay(), status_code=leg.upstream.status_code,
                         headers=downstream_headers(leg.upstream, leg.replica))

    async def _relay(self) -> AsyncIterator[bytes]:
        stream = self.stream
        while True:
            leg = self.leg
            pending = b""
            try:
                async with aclosing(_chunks_until_ejected(self.router, leg)) as chunks:
                    async for chunk in chunks:
                        data = pending + chunk if pending else chunk
                        cut = last_event_end(data)
                        pending = data[cut:]
                        if cut:
                            out, tokens = stream.relay(data[:cut])
                            leg.replica.progress(leg.ticket, tokens)
                            if out:
                                yield out
                            if stream.replica_failure is not None:
                                raise StreamBroke(f"the replica gave up: {stream.replica_failure}")
                if stream.done or not stream.tracked:
                    if pending:
                        yield pending
                    return
                raise StreamBroke("the stream ended before data: [DONE]")
            except (httpx.HTTPError, ReplicaEjected, StreamBroke) as exc:
                if stream.finished:  # only the end marker (and perhaps a usage chunk) is missing
                    yield DONE
                    return
                await self._close(leg)
                if stream.resumable and await self._continue(leg, exc):
                    self.router.attempt_failed(leg.replica, exc, "mid_stream")
                    stream.replica_failure = None
                    continue
                self.router.stream_failed(leg.replica, exc)
                if stream.tracked:
                    self.router.metrics.stream_migrations.labels("failed").inc()
                yield mid_stream_error(leg.replica, exc)
                return

    async def _continue(self, failed: Leg, exc: BaseException) -> bool:
        """Move the stream to another replica; False when none takes it."""
        self.failed.add(failed.replica.replica_id)
        token_ids = self.stream.token_ids
        body = self.migration.continuation_body(token_ids)
        while self.continuations_left > 0:
            self.continuations_left -= 1
            try:
                routing = self.router.choose(self.call, self.policy_name, self.failed, self.request_headers)
            except NoHealthyReplica:
                return False
            replica = routing.replica
            resumed = len(token_ids)
            ticket = replica.begin(max(self.call.prompt_tokens + resumed - routing.cached_tokens, 0),
                                   max(self.call.max_output_tokens - resumed, 0), time.monotonic(),
                                   offline=self.call.offline)
            try:
                leg = await self._start(replica, ticket, body, resumed)
            except (httpx.HTTPError, StopAsyncIteration, ReplicaEjected, NotResumed) as error:
                self.router.request_ended(replica, ticket)
                self.router.attempt_failed(replica, error, "mid_stream")
                self.failed.add(replica.replica_id)
                logger.warning("fleetserve router: %s could not continue a stream: %s", replica.replica_id,
                               describe_error(error))
                continue
            except BaseException:
                self.router.request_ended(replica, ticket)
                raise
            replica.first_byte(ticket, time.monotonic())
            self.leg = leg
            self.stream.continuing = True
            self.router.metrics.stream_migrations.labels("resumed").inc()
            logger.info("fleetserve router: a stream broken on %s (%s) goes on from %s after %d tokens",
                        failed.replica.replica_id, describe_error(exc), replica.replica_id, resumed)
            return True
        return False

    async def _start(self, replica: Replica, ticket: Ticket, body: bytes, resumed: int) -> Leg:
        answer = await attempt(self.router, replica, self.path, body, self.request_headers)
        upstream = answer.upstream
        if answer.body is not None:
            raise NotResumed(f"HTTP {upstream.status_code}: {answer.body[:200]!r}")
        assert answer.chunks is not None
        if upstream.headers.get(RESUMED_HEADER) != str(resumed):
            await upstream.aclose()
            raise NotResumed(f"the answer has no {RESUMED_HEADER}: {resumed} header (an engine without "
                             f"{RESUME_TOKEN_IDS} would start over)")
        return Leg(replica, ticket, upstream, answer.chunks, answer.first_chunk)

    async def _close(self, leg: Leg) -> None:
        self.router.request_ended(leg.replica, leg.ticket)
        await leg.upstream.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close(self.leg)
