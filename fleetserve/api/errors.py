"""Every failure leaves the server in the OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("fleetserve.api")

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 499: "client_closed_request",
          500: "server_error", 503: "service_unavailable"}


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its engine requests are already aborted."""


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: int | str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else status
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def model_not_found(name: str, served: Sequence[str]) -> APIError:
    return APIError(404, f"the model {name!r} does not exist; this server serves {list(served)} "
                         f"(see GET /v1/models)", "model", "model_not_found")


def queue_full(detail: str, retry_after_s: int = 1) -> APIError:
    return APIError(429, f"the server is at capacity: {detail}; retry after {retry_after_s}s", None,
                    "queue_full", {"Retry-After": str(retry_after_s)})


def unavailable(message: str) -> APIError:
    return APIError(503, message, None, "service_unavailable", {"Retry-After": "5"})


def too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body is {size} bytes or more, beyond the limit of {limit} bytes "
                         f"(--max-body-bytes); send a smaller request", None, "request_too_large")


def error_body(status: int, message: str, param: str | None = None, code: int | str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code if code is not None else status}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.status, error.message, error.param, error.code), error.status,
                        headers=error.headers)


def sse_error_event(error: APIError) -> str:
    """An error that happens after a stream has started travels inside the stream, as vLLM does."""
    return f"data: {json.dumps(error_body(error.status, error.message, error.param, error.code))}\n\n"


def _field_path(loc: Sequence[Any]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    # Union members show up as extra location parts (e.g. 'str', 'list[int]'); they name no field.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in _TYPE_NAMES))]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-plain",
               "TextContentPart", "ChatMessage"}


# Fields that accept several shapes; pydantic reports one failure per shape, which reads badly.
_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "content": 'a string or a list of {"type": "text", "text": ...} parts',
}


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "the request is invalid", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return (f"the body is not valid JSON ({ctx.get('error', 'parse error')} at position "
                f"{first['loc'][-1]}); send a JSON object"), None
    param = _field_path(first.get("loc", ())) or None
    named = [p for p in first.get("loc", ()) if isinstance(p, str) and p not in ("body", "query")]
    shape_field = next((p for p in reversed(named) if p in _SHAPES), None)
    if shape_field is not None and len(errors) > 1:
        field_path = param.split(shape_field)[0] + shape_field if param else shape_field
        return f"{field_path} must be {_SHAPES[shape_field]}; got {_shorten(_input_at(exc, field_path))}", field_path
    if first.get("type") == "missing":
        message = f"the field {param!r} is required" if param else "the request body is required"
    elif first.get("type") == "model_attributes_type" and not param:
        message = (f"the body must be a JSON object with Content-Type: application/json, got "
                   f"{_shorten(first.get('input'))}")
    else:
        message = f"{param or 'the body'}: {first.get('msg', 'invalid value')}, got {_shorten(first.get('input'))}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return message, param


def _input_at(exc: RequestValidationError, field_path: str) -> Any:
    body = getattr(exc, "body", None)
    value: Any = body
    for part in field_path.replace("[", ".").replace("]", "").split("."):
        try:
            value = value[int(part)] if part.isdigit() else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return body
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        return error_response(bad_request(message, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /docs for the endpoints"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400:
            message = f"{exc.detail}; send a UTF-8 JSON object"  # FastAPI's own, e.g. for undecodable bytes
        else:
            message = str(exc.detail)
        return error_response(APIError(exc.status_code, message, None, None, dict(exc.headers or {}) or None))

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(_: Request, __: ClientDisconnected) -> JSONResponse:
        # Nobody reads this; 499 (nginx's "client closed request") keeps it out of the 5xx counts.
        return error_response(APIError(499, "the client closed the connection", None, "client_closed_request"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}", None, None))
