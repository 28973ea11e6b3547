"""A batch line's answer in OpenAI's output format:
{"id", "custom_id", "response": {"status_code", "request_id", "body"} or null, "error": {"code", "message"} or null}.
"""
from __future__ import annotations

from typing import Any

from fleetserve.api.batch_store import new_id


def output_line(custom_id: str | None, status_code: int, request_id: str, body: Any) -> dict:
    return {"id": new_id("batch_req_"), "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": request_id, "body": body}, "error": None}


def failed_response_line(custom_id: str | None, status_code: int, request_id: str, body: Any) -> dict:
    """A request the endpoint refused: its response as the endpoint sent it, and its error lifted out."""
    error: dict = body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    code = error.get("code")
    line = output_line(custom_id, status_code, request_id, body)
    line["error"] = {"code": str(code) if code is not None else str(status_code),
                     "message": error.get("message") or f"the endpoint answered HTTP {status_code}"}
    return line


def error_line(custom_id: str | None, code: str, message: str) -> dict:
    """A line that never reached the endpoint."""
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}
