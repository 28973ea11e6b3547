"""One readable message for a request body that failed validation, from pydantic's list of errors, so the
replica and the router refuse the same body with the same words."""
from __future__ import annotations

from typing import Any, Sequence

_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-plain",
               "TextContentPart", "ChatMessage"}

# Fields that accept several shapes; pydantic reports one failure per shape, which reads badly.
_SHAPES = {
    "prompt": "a string, a list of strings, a list of token ids, or a list of lists of token ids",
    "stop": "a string or a list of strings",
    "content": 'a string or a list of {"type": "text", "text": ...} parts',
}


def _field_path(loc: Sequence[Any]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    # Union members show up as extra location parts (e.g. 'str', 'list[int]'); they name no field.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in _TYPE_NAMES))]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe_validation_errors(errors: Sequence[Any], body: Any) -> tuple[str, str | None]:
    """(message, param) for pydantic's `errors()` of `body`."""
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
        return f"{field_path} must be {_SHAPES[shape_field]}; got {_shorten(_input_at(body, field_path))}", field_path
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


def _input_at(body: Any, field_path: str) -> Any:
    value: Any = body
    for part in field_path.replace("[", ".").replace("]", "").split("."):
        try:
            value = value[int(part)] if part.isdigit() else value[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return body
    return value
