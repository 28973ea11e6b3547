"""Reading a batch input file: OpenAI's JSONL, one request a line,
{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}.

Two kinds of problem, as OpenAI has them: a problem with the whole file (not JSONL at all, empty, a
custom_id used twice, a model this server does not serve) fails the batch during validation with the
Batch object's `errors`; a problem with one line (not JSON, a missing field, another endpoint's url)
answers that line in the error file and the rest of the batch runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from fleetserve.api.batch_objects import BATCH_ENDPOINTS, validation_error
from fleetserve.api.batch_results import error_line


@dataclass(frozen=True)
class InputLine:
    index: int  # 1-based line number in the file
    custom_id: str | None
    request: dict | None  # {"url", "body"}: what to run; None when the line is refused
    refusal: dict | None = None  # its error-file line when refused

    @property
    def model(self) -> Any:
        return None if self.request is None else self.request["body"].get("model")


def parse_input(content: bytes, endpoint: str | None) -> tuple[list[InputLine], list[dict]]:
    """The file's lines (blank ones skipped) and the errors that fail the whole batch. `endpoint` is the
    batch's own; None accepts any batch endpoint line by line (`fleetserve batch`)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [validation_error("invalid_file_format", f"the input file is not UTF-8 text ({exc}); upload a "
                                     "JSONL file, one JSON request per line")]
    lines = [_parse_line(number, raw, endpoint) for number, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not lines:
        return [], [validation_error("empty_file", "the input file has no requests; upload a JSONL file, one JSON "
                                     "request per line")]
    if all(line.refusal is not None and line.refusal["error"]["code"] == "invalid_json_line" for line in lines):
        return lines, [validation_error("invalid_file_format", "the input file is not JSONL: no line is a JSON "
                                        "object; upload one JSON request per line, "
                                        '{"custom_id", "method": "POST", "url", "body"}', lines[0].index)]
    return lines, _duplicates(lines)


def _duplicates(lines: list[InputLine]) -> list[dict]:
    first_seen: dict[str, int] = {}
    errors = []
    for line in lines:
        if line.custom_id is None:
            continue
        if line.custom_id in first_seen:
            errors.append(validation_error(
                "duplicate_custom_id", f"custom_id {line.custom_id!r} on line {line.index} was already used on line "
                f"{first_seen[line.custom_id]}; every request needs its own custom_id", line.index, "custom_id"))
        first_seen.setdefault(line.custom_id, line.index)
    return errors


def unknown_models(lines: list[InputLine], served: Sequence[str]) -> list[dict]:
    """Validation errors for lines naming a model this server does not serve (no model: the default one)."""
    return [validation_error("model_not_found", f"line {line.index} asks for the model {line.model!r}, which this "
                             f"server does not serve; it serves {list(served)} (see GET /v1/models)", line.index,
                             "body.model")
            for line in lines if line.model is not None and line.model not in served]


def _parse_line(number: int, raw: str, endpoint: str | None) -> InputLine:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _refused(number, None, "invalid_json_line", f"line {number} is not valid JSON: {exc}")
    if not isinstance(item, dict):
        return _refused(number, None, "invalid_json_line", f"line {number} is JSON but not an object; send "
                        '{"custom_id", "method": "POST", "url", "body"}')
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _refused(number, None, "missing_required_parameter",
                        f"line {number} has no custom_id (a non-empty string naming the request)")
    method, url, body = item.get("method"), item.get("url"), item.get("body")
    if method != "POST":
        return _refused(number, custom_id, "invalid_method", f"line {number} has method {method!r}; only POST is "
                        "supported")
    allowed = BATCH_ENDPOINTS if endpoint is None else (endpoint,)
    if url not in allowed:
        return _refused(number, custom_id, "invalid_url", f"line {number} has url {url!r}; "
                        f"{'this batch runs ' + endpoint if endpoint else 'use one of ' + ', '.join(allowed)}")
    if not isinstance(body, dict):
        return _refused(number, custom_id, "missing_required_parameter", f"line {number} needs a JSON object body "
                        "(the request)")
    if body.get("stream"):
        return _refused(number, custom_id, "invalid_request", f"line {number} asks for streaming, which a batch "
                        "cannot do; omit stream")
    return InputLine(number, custom_id, {"url": url, "body": body})


def _refused(number: int, custom_id: str | None, code: str, message: str) -> InputLine:
    return InputLine(number, custom_id, None, error_line(custom_id, code, message))
