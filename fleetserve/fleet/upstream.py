"""One attempt at a replica: the headers each way, the request sent and its answer awaited until the first
body byte (unless health checks eject the replica first), and the pieces a relay of its event stream uses."""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator

import httpx
from starlette.requests import Request

from fleetserve.fleet.replicas import Replica
from fleetserve.wire.errors import describe_error, error_body

if TYPE_CHECKING:
    from fleetserve.fleet.router_state import RouterState

RETRY_STATUSES = {429, 502, 503, 504}
REPLICA_HEADER = "x-fleetserve-replica"
# Headers that describe one hop, not the message; httpx and uvicorn set their own.
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
                "upgrade", "proxy-authorization", "proxy-authenticate", "accept-encoding", "content-encoding"}
DONE = b"data: [DONE]\n\n"


def upstream_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}


def downstream_headers(response: httpx.Response, replica: Replica) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
    headers[REPLICA_HEADER] = replica.replica_id
    return headers


def last_event_end(data: bytes) -> int:
    """The end of the last complete server-sent event in `data` (0 when there is none)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def mid_stream_error(replica: Replica, exc: BaseException) -> bytes:
    body = error_body(503, f"the replica {replica.replica_id} ({replica.url}) failed mid-stream "
                           f"({describe_error(exc)}); the answer is incomplete, retry the request",
                      None, "replica_failed")
    return f"data: {json.dumps(body)}\n\n".encode() + DONE


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


async def attempt(router: RouterState, replica: Replica, path: str, raw_body: bytes,
                  headers: dict[str, str]) -> Answer:
    """Wait for the replica's first byte, unless the replica is ejected first."""
    sending = asyncio.ensure_future(_until_first_byte(router, replica, path, raw_body, headers))
    ejected = asyncio.ensure_future(router.ejection_of(replica).wait())
    try:
        await asyncio.wait({sending, ejected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ejected.cancel()
        if not sending.done():
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
    if sending.cancelled():
        raise ReplicaEjected(f"the replica was ejected ({replica.last_error}) before it answered")
    return sending.result()


def stage_of(exc: BaseException) -> str:
    if isinstance(exc, ReplicaEjected):
        return "ejected"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "connect"
    return "before_first_byte"
