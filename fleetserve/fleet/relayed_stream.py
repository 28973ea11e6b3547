"""What a client has been sent of a stream the router may have to continue elsewhere (request migration,
fleetserve.fleet.stream_migration), and each event rewritten on its way to the client.

The replica was asked for every chunk's output token ids (vLLM's `return_token_ids`); the router keeps those
of the events it relayed, in order, and drops the ids from what the client sees unless the client asked for
them. Events from a continuation take the first replica's stream `id` and `created`, so the client sees one
stream. A chunk that carries text without token ids (an engine without `return_token_ids`) makes the stream
one that cannot be continued.

An error event in which the replica gives up on the request for reasons of its own (it is shutting down,
its engine died, or it is a router whose replica failed) is not passed on while the stream can still be
continued: it marks the replica failed, like a broken connection.
"""
from __future__ import annotations

import json
import re
from typing import Any

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")
_TOKEN_FIELDS = ("token_ids", "prompt_token_ids")
# Error codes (fleetserve.wire.errors) of a replica that failed rather than of a request that did.
REPLICA_FAILURE_CODES = {"service_unavailable", "engine_dead", "replica_failed"}


class RelayedStream:
    def __init__(self, keep_token_ids: bool, resumed_token_ids: list[int] | None = None) -> None:
        self.keep_token_ids = keep_token_ids
        self.token_ids: list[int] = list(resumed_token_ids or [])  # the output so far, as the client has it
        self.tracked = True  # every chunk with output so far carried its token ids
        self.finished = False  # a choice's finish_reason was relayed
        self.done = False  # `data: [DONE]` was relayed
        self.continuing = False  # events now come from a continuation on another replica
        self.replica_failure: str | None = None  # the message of an error event that says the replica failed
        self._id: Any = None
        self._created: Any = None

    @property
    def resumable(self) -> bool:
        return self.tracked and not self.done

    def relay(self, events: bytes) -> tuple[bytes, int]:
        """Complete events as they came from the replica -> the bytes to send the client, and the output
        tokens they carry (events, once the stream cannot be continued: it is passed on as it is)."""
        if not self.tracked:
            return events, events.count(b"data:")
        out: list[bytes] = []
        tokens = 0
        for event in _EVENT_END.split(events):
            if not event:
                continue
            rewritten, count = self._event(event)
            if self.replica_failure is not None:
                break  # what follows (its `data: [DONE]`) ends a stream that goes on elsewhere
            out.append(rewritten)
            tokens += count
        return b"".join(part + b"\n\n" for part in out), tokens

    def _event(self, event: bytes) -> tuple[bytes, int]:
        if not event.startswith(b"data:"):
            return event, 0  # a comment or another field: passed on as it is
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return event, 0
        try:
            chunk = json.loads(payload)
        except ValueError:
            self.tracked = False
            return event, 0
        if not isinstance(chunk, dict) or "error" in chunk:
            error = chunk.get("error") if isinstance(chunk, dict) else None
            if isinstance(error, dict) and error.get("code") in REPLICA_FAILURE_CODES:
                self.replica_failure = str(error.get("message"))
            else:
                self.tracked = False  # the request failed, not the replica: another would fail it too
            return event, 0
        tokens, changed = self._take_tokens(chunk)
        if self._id is None:
            self._id, self._created = chunk.get("id"), chunk.get("created")
        elif self.continuing:
            chunk["id"], chunk["created"] = self._id, self._created
            changed = True
        if not changed:
            return event, tokens
        return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode(), tokens

    def _take_tokens(self, chunk: dict[str, Any]) -> tuple[int, bool]:
        """The output tokens the chunk carries, and whether their ids were taken out of it for the client."""
        keep = self.keep_token_ids
        removed = not keep and chunk.pop("prompt_token_ids", None) is not None
        tokens = 0
        for choice in chunk.get("choices") or ():
            ids = choice.get("token_ids")
            if ids is None:
                delta = choice.get("delta") or {}
                if choice.get("text") or delta.get("content"):
                    self.tracked = False
            else:
                self.token_ids.extend(ids)
                tokens += len(ids)
            if choice.get("finish_reason"):
                self.finished = True
            if not keep:
                for name in _TOKEN_FIELDS:
                    removed = choice.pop(name, None) is not None or removed
        return tokens, removed
