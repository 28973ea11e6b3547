"""Request migration against fake backends (no model): a replica that gives up mid-stream with an error event
has its stream continued by one that confirms the resumption, and not by one that would start over."""
from __future__ import annotations

import json

import httpx
import pytest

from fleet_helpers import FakeOpenAIHandler, metric_sum, serve_in_thread, wait_until

BODY = {"model": "fake-model", "prompt": "hello", "max_tokens": 4, "stream": True}


def chunk(text: str, ids: list[int], finish: str | None = None, stream_id: str = "cmpl-1") -> dict:
    return {"id": stream_id, "object": "text_completion", "created": 7, "model": "fake-model",
            "choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish}]}


class Fake:
    """`gives_up`: streams one token, then an engine_dead error event. `resumes`: refuses fresh requests with
    503 and continues resumed ones, saying so in the header; `ignores`: the same without the header."""

    def __init__(self, mode: str) -> None:
        self.bodies: list[dict] = []
        fake = self

        class Handler(FakeOpenAIHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                fake.bodies.append(body)
                resumed = body.get("resume_token_ids")
                if mode != "gives_up" and resumed is None:
                    self._send(503, {"error": {"message": "busy", "code": 503}})
                    return
                events = ([chunk("a", [1]), {"error": {"message": "the engine loop stopped", "code": "engine_dead"}}]
                          if mode == "gives_up" else [chunk("b", [2], stream_id="cmpl-2"),
                                                      chunk("c", [3], "length", stream_id="cmpl-2")])
                data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                if mode == "resumes":
                    self.send_header("x-fleetserve-resumed-tokens", str(len(resumed)))
                self.end_headers()
                self.wfile.write(data)

        self.server, self.url = serve_in_thread(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes():
    made: list[Fake] = []

    def make(mode: str) -> Fake:
        made.append(Fake(mode))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def events_of(text: str) -> list[str]:
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block.strip()]


def test_a_replica_that_gives_up_mid_stream_is_continued_by_one_that_resumes(start_router, fakes):
    gives_up, resumes = fakes("gives_up"), fakes("resumes")
    router = start_router([gives_up.url, resumes.url], ["--tokenizer", "none"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    response = httpx.post(f"{router.url}/v1/completions", json=BODY, timeout=10)
    events = events_of(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "abc"
    assert {(c["id"], c["created"]) for c in chunks} == {("cmpl-1", 7)}  # one stream
    assert all("token_ids" not in c["choices"][0] for c in chunks)  # the client did not ask for them
    continued = resumes.bodies[-1]
    assert continued["resume_token_ids"] == [1] and continued["return_token_ids"] is True
    assert continued["prompt"] == "hello" and continued["max_tokens"] == 4
    metrics = router.metrics()
    assert metrics['fleetserve:router_stream_migrations_total{outcome="resumed"}'] == 1
    assert metric_sum(metrics, "fleetserve:router_stream_failures_total") == 0


def test_a_backend_that_would_start_over_is_not_used_to_continue(start_router, fakes):
    gives_up, ignores = fakes("gives_up"), fakes("ignores")
    router = start_router([gives_up.url, ignores.url], ["--tokenizer", "none"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    response = httpx.post(f"{router.url}/v1/completions", json={**BODY, "return_token_ids": True}, timeout=10)
    events = events_of(response.text)
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["choices"][0]["text"] == "a" and first["choices"][0]["token_ids"] == [1]  # asked for: kept
    error = json.loads(events[-2])["error"]
    assert error["code"] == "replica_failed" and "the engine loop stopped" in error["message"]
    assert len(events) == 3 and ignores.bodies[-1]["resume_token_ids"] == [1]
    metrics = router.metrics()
    assert metrics['fleetserve:router_stream_migrations_total{outcome="failed"}'] == 1
    assert metric_sum(metrics, "fleetserve:router_stream_failures_total") == 1
