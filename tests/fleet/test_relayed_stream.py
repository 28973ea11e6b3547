"""What the router makes of a stream it may continue elsewhere (fleetserve.fleet.relayed_stream): the token
ids it keeps, the events the client gets, and when a stream cannot be continued."""
from __future__ import annotations

import json

from fleetserve.fleet.relayed_stream import RelayedStream


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk(text: str, ids: list[int] | None, finish: str | None = None, stream_id: str = "cmpl-a") -> dict:
    choice: dict = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return {"id": stream_id, "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}


def events_of(data: bytes) -> list[dict]:
    return [json.loads(block[len(b"data: "):]) for block in data.split(b"\n\n") if block.startswith(b"data: {")]


def test_token_ids_are_kept_and_taken_out_unless_the_client_asked_for_them():
    first = {**chunk("Hello", [1, 2]), "choices": [{**chunk("Hello", [1, 2])["choices"][0], "prompt_token_ids": [9]}]}
    stream = RelayedStream(keep_token_ids=False)
    out, tokens = stream.relay(event(first) + event(chunk(" world", [3])))
    assert tokens == 3 and stream.token_ids == [1, 2, 3] and stream.resumable
    assert [c["choices"][0] for c in events_of(out)] == [
        {"index": 0, "text": "Hello", "logprobs": None, "finish_reason": None},
        {"index": 0, "text": " world", "logprobs": None, "finish_reason": None}]
    kept = RelayedStream(keep_token_ids=True)
    data = event(first) + event(chunk(" world", [3]))
    assert kept.relay(data) == (data, 3)  # nothing to change: the bytes pass as they came


def test_a_continuation_takes_the_first_streams_id_and_the_end_is_seen():
    stream = RelayedStream(keep_token_ids=False, resumed_token_ids=[7])
    stream.relay(event(chunk("a", [1])))
    stream.continuing = True
    out, _ = stream.relay(event({**chunk("b", [2], "length", stream_id="cmpl-b"), "created": 5}) + b"data: [DONE]\n\n")
    (rewritten,) = events_of(out)
    assert rewritten["id"] == "cmpl-a" and rewritten["created"] == 1
    assert out.endswith(b"data: [DONE]\n\n")
    assert stream.token_ids == [7, 1, 2] and stream.finished and stream.done and not stream.resumable


def test_text_without_token_ids_or_an_error_event_cannot_be_continued():
    plain = RelayedStream(keep_token_ids=False)
    data = event({"choices": [{"index": 0, "text": "x"}]})
    assert plain.relay(data) == (data, 0) and not plain.resumable
    later = event({"choices": [{"index": 0, "text": "y"}]})
    assert plain.relay(later) == (later, 1)  # passed on untouched from then on
    errored = RelayedStream(keep_token_ids=False)
    errored.relay(event({"error": {"message": "aborted", "code": 503}}))
    assert not errored.resumable
    role_only = RelayedStream(keep_token_ids=False)
    role_only.relay(event({"id": "c", "created": 1, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                                      "content": ""}}]}))
    assert role_only.resumable and role_only.token_ids == []


def test_an_error_event_of_a_failed_replica_is_held_back_with_what_follows():
    stream = RelayedStream(keep_token_ids=False)
    failure = event({"error": {"message": "the server shut down", "code": "service_unavailable"}})
    out, tokens = stream.relay(event(chunk("a", [1])) + failure + b"data: [DONE]\n\n")
    assert [c["choices"][0]["text"] for c in events_of(out)] == ["a"] and b"error" not in out
    assert not out.endswith(b"[DONE]\n\n") and tokens == 1
    assert stream.replica_failure == "the server shut down" and stream.resumable and stream.token_ids == [1]
