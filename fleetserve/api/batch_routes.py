"""The OpenAI Files and Batches endpoints, as an APIRouter over a BatchStore and a BatchRunner, so any
FastAPI app with the generation endpoints (the replica's server, the fleet router) can mount them.

Creating a batch checks what OpenAI checks at once (the endpoint, the window, the input file and its
purpose: 400); the file's content is checked by the runner while the batch is `validating`, and a batch
whose file is not JSONL, repeats a custom_id or names a model the server does not serve ends `failed`,
with the reasons in its `errors`.
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from fleetserve.api.batch_multipart import parse_form
from fleetserve.api.batch_objects import (
    BATCH_ENDPOINTS,
    COMPLETION_WINDOW_S,
    TERMINAL,
    BatchCreateRequest,
    deleted_file,
    new_batch_object,
    page,
)
from fleetserve.api.batch_runner import BatchRunner
from fleetserve.api.batch_store import BatchStore, new_id
from fleetserve.wire.errors import APIError, bad_request

FILES = "/v1/files"
BATCHES = "/v1/batches"
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"],
    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]}},
}}}}}
_METADATA_LIMITS = (16, 64, 512)  # pairs, key characters, value characters (OpenAI's)


def not_found(kind: str, object_id: str, listing: str) -> APIError:
    return APIError(404, f"no {kind} {object_id!r} on this server; GET {listing} lists them", "id",
                    f"{kind}_not_found")


def batch_router(store: BatchStore, runner: BatchRunner | None = None) -> APIRouter:
    router = APIRouter(tags=["batch"])

    def nudge() -> None:
        if runner is not None:
            runner.nudge()

    @router.post(FILES, openapi_extra=_UPLOAD_BODY)
    async def upload_file(request: Request) -> dict:
        form = parse_form(request.headers.get("content-type"), await request.body())
        purpose = form["purpose"].content.decode("utf-8", "replace").strip() if "purpose" in form else None
        if purpose != "batch":
            raise bad_request(f"purpose {purpose!r} is not supported: this server stores files for the Batch API "
                              "only; send purpose=batch", "purpose")
        upload = form.get("file")
        if upload is None or upload.filename is None:
            raise bad_request("the form has no `file` field with a file; send the JSONL file as `file`", "file")
        return store.add_file(upload.filename, purpose, upload.content)

    @router.get(FILES)
    async def list_files(purpose: str | None = None, after: str | None = None,
                         limit: int = Query(10000, ge=1, le=10000)) -> dict:
        files, has_more = store.list_files(purpose, after, limit)
        return page(files, has_more)

    @router.get(FILES + "/{file_id}")
    async def retrieve_file(file_id: str = Path(max_length=200)) -> dict:
        found = store.get_file(file_id)
        if found is None:
            raise not_found("file", file_id, FILES)
        return found

    @router.get(FILES + "/{file_id}/content")
    async def file_content(file_id: str = Path(max_length=200)) -> Response:
        content = store.file_content(file_id)
        if content is None:
            raise not_found("file", file_id, FILES)
        return Response(content, media_type="application/octet-stream")

    @router.delete(FILES + "/{file_id}")
    async def delete_file(file_id: str = Path(max_length=200)) -> dict:
        if not store.delete_file(file_id):
            raise not_found("file", file_id, FILES)
        return deleted_file(file_id)

    @router.post(BATCHES)
    async def create_batch(body: BatchCreateRequest) -> dict:
        if body.endpoint not in BATCH_ENDPOINTS:
            raise bad_request(f"endpoint {body.endpoint!r} is not supported for batches; use one of "
                              f"{', '.join(BATCH_ENDPOINTS)}", "endpoint")
        if body.completion_window not in COMPLETION_WINDOW_S:
            raise bad_request(f"completion_window {body.completion_window!r} is not supported; use "
                              f"{', '.join(COMPLETION_WINDOW_S)}", "completion_window")
        _check_metadata(body.metadata)
        input_file = store.get_file(body.input_file_id)
        if input_file is None:
            raise bad_request(f"input_file_id {body.input_file_id!r} names no file on this server; upload the JSONL "
                              "file with POST /v1/files (purpose=batch) first", "input_file_id")
        if input_file["purpose"] != "batch":
            raise bad_request(f"the file {body.input_file_id!r} has purpose {input_file['purpose']!r}; a batch reads "
                              "a file uploaded with purpose=batch", "input_file_id")
        batch = new_batch_object(new_id("batch_"), body)
        store.add_batch(batch)
        nudge()
        return batch

    @router.get(BATCHES)
    async def list_batches(after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict:
        batches, has_more = store.list_batches(after, limit)
        return page(batches, has_more)

    @router.get(BATCHES + "/{batch_id}")
    async def retrieve_batch(batch_id: str = Path(max_length=200)) -> dict:
        batch = store.get_batch(batch_id)
        if batch is None:
            raise not_found("batch", batch_id, BATCHES)
        return batch

    @router.post(BATCHES + "/{batch_id}/cancel")
    async def cancel_batch(batch_id: str = Path(max_length=200)) -> dict:
        batch = store.update_batch(batch_id, ("validating", "in_progress"), status="cancelling",
                                   cancelling_at=int(time.time()))
        if batch is None:
            current = store.get_batch(batch_id)
            if current is None:
                raise not_found("batch", batch_id, BATCHES)
            if current["status"] in (*TERMINAL, "finalizing"):
                raise APIError(409, f"the batch {batch_id} is {current['status']} and can no longer be cancelled",
                               None, "batch_not_cancellable")
            return current  # already cancelling
        nudge()
        return batch

    return router


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    pairs, key_chars, value_chars = _METADATA_LIMITS
    if len(metadata) > pairs:
        raise bad_request(f"metadata has {len(metadata)} pairs; at most {pairs} are allowed", "metadata")
    for key, value in metadata.items():
        if len(key) > key_chars or len(value) > value_chars:
            raise bad_request(f"metadata key {key[:80]!r}: keys are at most {key_chars} characters and values at "
                              f"most {value_chars}", "metadata")
