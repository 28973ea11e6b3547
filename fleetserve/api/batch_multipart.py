"""multipart/form-data bodies (file uploads) read with the standard library's MIME parser, so uploads need
no extra dependency."""
from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

from fleetserve.wire.errors import bad_request


@dataclass(frozen=True)
class FormField:
    filename: str | None  # set for a file field
    content: bytes


def parse_form(content_type: str | None, body: bytes) -> dict[str, FormField]:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise bad_request(f"send the file as multipart/form-data (fields `file` and `purpose`), not "
                          f"{content_type or 'a body with no Content-Type'}")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    if not message.is_multipart() or message.defects:
        raise bad_request("the multipart/form-data body could not be read (bad or missing boundary); send the "
                          "fields `file` and `purpose`")
    fields: dict[str, FormField] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            content = part.get_payload(decode=True)
            fields[name] = FormField(part.get_filename(), content if isinstance(content, bytes) else b"")
    return fields
