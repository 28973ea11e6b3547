"""Disaggregated prefill on a replica, both ends (protocol: fleetserve.wire.kv_transfer).

As the prefill end, a request with `kv_transfer_params.do_remote_decode` keeps its prompt's KV when its prefill
ends, and its response says where to fetch it. As the decode end, a request with
`kv_transfer_params.do_remote_prefill` first fetches that KV (only the tokens this replica's prefix cache lacks)
and hands it to the engine with the first token. Whatever goes wrong on the way (the prefill replica gone, the
transfer cut, timed out or corrupted, no room for the blocks) the request computes its prompt here instead:
the client gets the same answer, later, and the reason is counted in /metrics.
"""
from __future__ import annotations

import asyncio
import http.client
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator

import torch
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fleetserve.engine.kv_handoff import PrefilledKV
from fleetserve.wire.block_hashes import chain_block_hashes
from fleetserve.wire.errors import APIError, bad_request
from fleetserve.wire.kv_transfer import (
    CONTENT_TYPE,
    KVShape,
    KVTransferError,
    decode_payload,
    encode_payload,
    kv_transfer_path,
    prompt_hash,
)

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState
    from fleetserve.engine.engine import LLMEngine

logger = logging.getLogger("fleetserve.api")
ENGINE_ID = uuid.uuid4().hex  # this server process, as vLLM's remote_engine_id names an engine


@dataclass(frozen=True)
class Handoff:
    """A request's part in a disaggregated prefill: export its KV, or import the KV `remote` points at."""
    export: bool = False
    remote: dict[str, Any] | None = None


def handoff_of(params: Any, num_jobs: int, stream: bool) -> Handoff | None:
    if params is None:
        return None
    if not isinstance(params, dict):
        raise bad_request(f"kv_transfer_params must be an object, got {type(params).__name__}", "kv_transfer_params")
    if params.get("do_remote_decode"):
        if stream:
            raise bad_request("kv_transfer_params.do_remote_decode needs stream=false: the response carries the "
                              "params a decode replica needs", "kv_transfer_params")
        if num_jobs != 1:
            raise bad_request("kv_transfer_params.do_remote_decode needs one prompt and n=1", "kv_transfer_params")
        return Handoff(export=True)
    if params.get("do_remote_prefill"):
        return Handoff(remote=params)
    return None


def kv_shape(engine: LLMEngine) -> KVShape:
    config = engine.model_config
    return KVShape(config.num_hidden_layers, config.num_key_value_heads, config.head_dim,
                   str(engine.kv_cache_dtype).removeprefix("torch."))


def response_params(request: Request, request_id: str, prompt_ids: list[int], first_token_id: int) -> dict[str, Any]:
    """The prefill response's kv_transfer_params: where the decode replica fetches the KV (vLLM's fields), and
    what it needs besides (fleetserve's)."""
    url = request.url
    return {"do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": ENGINE_ID,
            "remote_block_ids": [], "remote_host": url.hostname, "remote_port": url.port,
            "remote_request_id": request_id, "tp_size": 1, "first_token_id": first_token_id,
            "num_prompt_tokens": len(prompt_ids), "prompt_hash": prompt_hash(prompt_ids)}


async def serve_export(state: ServerState, request_id: str, start: int) -> Response:
    """GET /v1/kv_transfer/{request_id}: the export, once; 404 when unknown, fetched already or expired."""
    engine = state.require_engine().engine
    export = engine.kv_exports.take(request_id)
    if export is None:
        raise APIError(404, f"no KV waits here for request {request_id!r} (unknown, already fetched, or kept past "
                            f"its {engine.config.kv_export_ttl_s:g} s)", "request_id", "kv_not_found")
    prompt = export.prompt_token_ids
    if not 0 <= start <= len(prompt):
        raise bad_request(f"start={start} is outside the prompt's {len(prompt)} tokens", "start")
    body = memoryview(export.kv[start:].view(torch.uint8).numpy().reshape(-1)) if start < len(prompt) else b""
    header, chunks = await asyncio.to_thread(encode_payload, kv_shape(engine), start, len(prompt), prompt, body)

    async def stream() -> AsyncIterator[bytes | memoryview]:
        yield header
        for chunk in chunks:
            yield chunk

    return StreamingResponse(stream(), media_type=CONTENT_TYPE,
                             headers={"content-length": str(len(header) + len(body))})


class ImportRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def fetch_prefilled(state: ServerState, params: dict[str, Any], prompt_ids: list[int],
                          wants_logprobs: bool) -> PrefilledKV | None:
    """The prompt's KV and first token from the prefill replica `params` names; None (the reason logged and
    counted) when the request must compute its prompt here."""
    started = time.monotonic()
    try:
        prefilled, nbytes = await _fetch(state, params, prompt_ids, wants_logprobs)
    except ImportRefused as exc:
        state.metrics.kv_import_fallback(exc.reason)
        logger.warning("fleetserve: prefilling here instead of importing KV (%s): %s", exc.reason, exc)
        return None
    state.metrics.kv_import_done(nbytes, time.monotonic() - started)
    return prefilled


async def _fetch(state: ServerState, params: dict[str, Any], prompt_ids: list[int],
                 wants_logprobs: bool) -> tuple[PrefilledKV, int]:
    engine = state.require_engine().engine
    if wants_logprobs:
        raise ImportRefused("logprobs", "the first token's logprobs stay on the prefill replica")
    host, port, request_id = params.get("remote_host"), params.get("remote_port"), params.get("remote_request_id")
    first_token_id = params.get("first_token_id")
    if not (isinstance(host, str) and isinstance(port, int) and isinstance(request_id, str)
            and isinstance(first_token_id, int) and 0 <= first_token_id < engine.model_config.vocab_size):
        raise ImportRefused("bad_params", f"kv_transfer_params lack a usable remote_host, remote_port, "
                                          f"remote_request_id or first_token_id: {params}")
    if params.get("prompt_hash") not in (None, prompt_hash(prompt_ids)):
        raise ImportRefused("other_prompt", "kv_transfer_params were made for another prompt")
    block_size = engine.kv_cache.block_size
    start = engine.kv_cache.cached_prefix_length(chain_block_hashes(prompt_ids, block_size)) * block_size
    path = f"{kv_transfer_path(request_id)}?start={start}"
    try:
        data = await asyncio.to_thread(_download, host, port, path, state.options.kv_transfer_timeout_s)
        header, body = await asyncio.to_thread(decode_payload, data, kv_shape(engine), prompt_ids, start)
    except (OSError, http.client.HTTPException) as exc:
        raise ImportRefused("fetch_failed", f"GET http://{host}:{port}{path} failed: {type(exc).__name__}: "
                                            f"{exc}") from None
    except KVTransferError as exc:
        raise ImportRefused("bad_payload", str(exc)) from None
    shape = header.shape
    dtype = engine.kv_cache_dtype
    kv = torch.frombuffer(body, dtype=torch.uint8).view(dtype) if len(body) else torch.empty(0, dtype=dtype)
    kv = kv.view(header.end - header.start, shape.num_layers, 2, shape.num_kv_heads, shape.head_dim)
    return PrefilledKV(start, kv, first_token_id), len(data)


def _download(host: str, port: int, path: str, timeout_s: float) -> bytearray:
    """The whole answer, read straight into one buffer sized from its content-length. Blocking: run it on a
    worker thread. The standard library's client reads a body into a buffer at memory speed, where an
    asyncio client parsing 64 KiB pieces took 5x longer here."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            detail = response.read(300).decode(errors="replace")
            raise ImportRefused("not_found" if response.status == 404 else "fetch_failed",
                                f"GET {path} answered {response.status}: {detail}")
        declared = response.getheader("content-length", "")
        if not declared.isdigit():
            raise KVTransferError("the KV payload came without a content-length")
        data = bytearray(int(declared))
        with memoryview(data) as view:
            filled = 0
            while filled < len(data):
                count = response.readinto(view[filled:])
                if not count:
                    raise ImportRefused("fetch_failed", f"GET {path} was cut short: {filled} of {len(data)} bytes")
                filled += count
        return data
    finally:
        connection.close()
