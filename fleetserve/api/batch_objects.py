"""The Batch API's objects in OpenAI's shapes: the File and Batch objects, list pages, and the body of
POST /v1/batches."""
from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleetserve.wire import paths

BATCH_ENDPOINTS = (paths.CHAT_COMPLETIONS, paths.COMPLETIONS)
COMPLETION_WINDOW_S = {"24h": 24 * 3600}
FILE_PURPOSES = ("batch", "batch_output")  # batch_output: files this server writes
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str = Field(description=f"one of {', '.join(BATCH_ENDPOINTS)}")
    completion_window: str = Field(description="24h")
    metadata: dict[str, str] | None = Field(None, description="up to 16 string pairs")


def file_object(file_id: str, filename: str, purpose: str, size: int, created_at: int) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": created_at, "filename": filename,
            "purpose": purpose, "status": "processed", "status_details": None, "expires_at": None}


def new_batch_object(batch_id: str, body: BatchCreateRequest) -> dict:
    now = int(time.time())
    return {"id": batch_id, "object": "batch", "endpoint": body.endpoint, "errors": None,
            "input_file_id": body.input_file_id, "completion_window": body.completion_window, "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + COMPLETION_WINDOW_S[body.completion_window], "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.metadata}


def batch_errors(errors: list[dict]) -> dict:
    """The Batch object's `errors`: why validation failed, one entry per problem (code, message, param, line)."""
    return {"object": "list", "data": errors}


def validation_error(code: str, message: str, line: int | None = None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def page(data: list[dict], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def deleted_file(file_id: str) -> dict:
    return {"id": file_id, "object": "file", "deleted": True}


