"""Token ids out (vLLM's `return_token_ids`) and a generation resumed from the tokens it had
(`resume_token_ids`), against a real server: the resumed text completes the original exactly (greedy,
seeded, across a stop string), usage counts every token, a resumed stream has no opening, bad input is
refused."""
from __future__ import annotations

import json

import httpx
import pytest

from fleetserve.model.loader import DEFAULT_MODEL as MODEL

PROMPT = "The history of Rome"
GREEDY = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
SEEDED = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.9, "top_k": 50, "seed": 7,
          "ignore_eos": True}
CHAT = {"messages": [{"role": "user", "content": "Tell me about cats."}], "max_tokens": 12, "temperature": 0,
        "ignore_eos": True}


def stream(server, path: str, body: dict) -> tuple[list[dict], httpx.Headers]:
    chunks = []
    with httpx.stream("POST", f"{server.api_url}{path}", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
        return chunks, response.headers


def text_of(chunk: dict) -> str:
    return "".join(c.get("text") or (c.get("delta") or {}).get("content") or "" for c in chunk["choices"])


def ids_of(chunk: dict) -> list[int]:
    return [t for c in chunk["choices"] for t in c.get("token_ids", [])]


def relayed(chunks: list[dict], num_tokens: int) -> tuple[str, list[int]]:
    """What a client had after the chunks carrying the first `num_tokens` tokens: their text and ids."""
    text, ids = "", []
    for chunk in chunks:
        if len(ids) >= num_tokens:
            break
        text += text_of(chunk)
        ids += ids_of(chunk)
    assert len(ids) == num_tokens
    return text, ids


@pytest.mark.parametrize("body", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_resumed_stream_completes_the_original_exactly(server, body):
    chunks, _ = stream(server, "/completions", {**body, "return_token_ids": True})
    full_text = "".join(text_of(c) for c in chunks)
    full_ids = [t for c in chunks for t in ids_of(c)]
    assert len(full_ids) == body["max_tokens"]
    assert chunks[0]["choices"][0]["prompt_token_ids"]  # vLLM's shape: the prompt's ids in the first chunk
    for cut in (1, 6, 15):
        before, ids = relayed(chunks, cut)
        rest, headers = stream(server, "/completions", {**body, "return_token_ids": True, "resume_token_ids": ids})
        assert headers["x-fleetserve-resumed-tokens"] == str(cut)
        assert before + "".join(text_of(c) for c in rest) == full_text, cut
        assert ids + [t for c in rest for t in ids_of(c)] == full_ids, cut
        assert "prompt_token_ids" not in rest[0]["choices"][0]  # a continuation has no opening
        assert rest[-1]["choices"][0]["finish_reason"] == "length"


def test_a_stop_string_across_the_resume_point_still_stops(server):
    plain, _ = stream(server, "/completions", {**GREEDY, "return_token_ids": True})
    cut = 8
    boundary = len(relayed(plain, cut)[0])
    full_text = "".join(text_of(c) for c in plain)
    stop = full_text[boundary - 3:boundary + 3]
    assert full_text.find(stop) == boundary - 3, "the test needs a stop string first seen at the boundary"
    body = {**GREEDY, "stop": [stop], "return_token_ids": True}
    original, _ = stream(server, "/completions", body)
    expected = "".join(text_of(c) for c in original)
    assert expected == full_text[:boundary - 3]
    before, ids = relayed(original, cut)
    rest, _ = stream(server, "/completions", {**body, "resume_token_ids": ids})
    assert before + "".join(text_of(c) for c in rest) == expected
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"
    assert rest[-1]["choices"][0]["stop_reason"] == stop


def test_usage_and_token_ids_of_a_resumed_answer(server):
    full = httpx.post(f"{server.api_url}/completions", json={**GREEDY, "return_token_ids": True}, timeout=60).json()
    choice = full["choices"][0]
    assert len(choice["token_ids"]) == GREEDY["max_tokens"] and choice["prompt_token_ids"]
    resumed = httpx.post(f"{server.api_url}/completions", timeout=60, json={
        **GREEDY, "return_token_ids": True, "resume_token_ids": choice["token_ids"][:5]})
    answer = resumed.json()
    assert resumed.headers["x-fleetserve-resumed-tokens"] == "5"
    assert answer["choices"][0]["token_ids"] == choice["token_ids"][5:]
    assert answer["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    assert answer["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]
    streamed, _ = stream(server, "/completions", {**GREEDY, "resume_token_ids": choice["token_ids"][:5],
                                                 "stream_options": {"include_usage": True}})
    assert streamed[-1]["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    assert all("token_ids" not in c for chunk in streamed for c in chunk["choices"])  # only when asked


def test_a_resumed_chat_stream_has_no_role_chunk(server):
    chunks, _ = stream(server, "/chat/completions", {**CHAT, "return_token_ids": True})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["prompt_token_ids"]  # chat: at the top of the first chunk, as vLLM
    full_text = "".join(text_of(c) for c in chunks)
    before, ids = relayed(chunks, 4)
    rest, _ = stream(server, "/chat/completions", {**CHAT, "return_token_ids": True, "resume_token_ids": ids})
    assert all("role" not in c["delta"] for chunk in rest for c in chunk["choices"])
    assert "prompt_token_ids" not in rest[0]
    assert before + "".join(text_of(c) for c in rest) == full_text
    plain = httpx.post(f"{server.api_url}/chat/completions", json={**CHAT, "return_token_ids": True},
                       timeout=60).json()
    assert plain["prompt_token_ids"] == chunks[0]["prompt_token_ids"]
    assert plain["choices"][0]["token_ids"] == [t for c in chunks for t in ids_of(c)]


@pytest.mark.parametrize("extra, wording", [
    ({"n": 2, "resume_token_ids": [1]}, "needs n=1 and one prompt"),
    ({"prompt": ["a", "b"], "resume_token_ids": [1]}, "needs n=1 and one prompt"),
    ({"resume_token_ids": [5, 10**9]}, "resume_token_ids[1] = 1000000000 is outside the vocabulary"),
    ({"max_tokens": 2, "resume_token_ids": [5, 6]}, "already ended at resume_token_ids[1] (max_tokens"),
    ({"stop_token_ids": [6], "resume_token_ids": [5, 6, 7]}, "already ended at resume_token_ids[1] (the stop token 6)"),
    ({"resume_token_ids": [1], "kv_transfer_params": {"do_remote_decode": True}}, "cannot be combined"),
])
def test_bad_resume_requests_are_refused(server, extra, wording):
    response = httpx.post(f"{server.api_url}/completions", json={"model": MODEL, "prompt": PROMPT, **extra},
                          timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert wording in error["message"] and error["param"] == "resume_token_ids"
