"""The form a chat message takes for the chat template. A replica renders messages in this form, and a
router tokenizes them in the same form to compute the prompt's block hashes, so the two must agree."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence


def template_message(role: str, content: str | Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """Text parts joined by newlines (as vLLM does for templates that take plain strings), no content as
    "", and the developer role read as system."""
    if content is not None and not isinstance(content, str):
        content = "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return {"role": "system" if role == "developer" else role, "content": content or ""}


def template_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """OpenAI chat messages (JSON objects with "role" and "content") in the template's form."""
    return [template_message(message["role"], message.get("content")) for message in messages]
