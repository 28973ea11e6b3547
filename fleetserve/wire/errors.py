"""The OpenAI error shape, {"error": {"message", "type", "param", "code"}}, and the errors sent in it."""
from __future__ import annotations

import json
from typing import Sequence

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 499: "client_closed_request",
          500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: int | str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else status
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: int | str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code if code is not None else status}}


def sse_error_event(error: APIError) -> str:
    """An error that happens after a stream has started travels inside the stream, as vLLM does."""
    return f"data: {json.dumps(error.body())}\n\n"


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


# The largest request body the router and a replica accept unless told otherwise (413 beyond).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body is {size} bytes or more, beyond the limit of {limit} bytes "
                         f"(--max-body-bytes); send a smaller request", None, "request_too_large")


def describe_error(exc: BaseException) -> str:
    """An exception as a message names it: its type, and its text when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
