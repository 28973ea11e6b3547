"""Forwarding against fake backends (no model): bytes pass through unchanged, refusals are retried on
another replica before the first byte, a mid-stream failure ends with an error event and is counted."""
from __future__ import annotations

import json
import threading
import time

import httpx

from fleet_helpers import metric_sum, wait_until

STREAM_BODY = {"model": "fake-model", "prompt": "hello there", "max_tokens": 5, "stream": True}


def test_streams_pass_through_byte_for_byte(start_router, fake_backend):
    fake = fake_backend(name="alpha")
    router = start_router([fake.url], ["--tokenizer", "none"])
    direct = httpx.post(f"{fake.url}/v1/completions", json=STREAM_BODY, timeout=10)
    routed = httpx.post(f"{router.url}/v1/completions", json=STREAM_BODY, timeout=10)
    assert routed.status_code == 200
    assert routed.content == direct.content
    assert routed.headers["content-type"].startswith("text/event-stream")
    assert routed.headers["x-fleetserve-replica"] == fake.url.split("//")[1]
    # The request body reached the backend unchanged too, but for the token ids a stream that may move to
    # another replica asks for (fleetserve.fleet.stream_migration).
    assert json.loads(fake.bodies[-1]) == {**json.loads(fake.bodies[-2]), "return_token_ids": True}
    plain = httpx.post(f"{router.url}/v1/completions", json={**STREAM_BODY, "stream": False}, timeout=10)
    assert plain.json()["choices"][0]["text"] == "alpha"


def test_refusals_before_the_first_byte_are_retried_on_another_replica(start_router, fake_backend):
    busy, good = fake_backend("busy", "busy"), fake_backend(name="good")
    router = start_router([busy.url, good.url], ["--tokenizer", "none", "--policy", "round_robin"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    for _ in range(6):
        response = httpx.post(f"{router.url}/v1/completions", json=STREAM_BODY, timeout=10)
        assert response.status_code == 200
        assert b"good0" in response.content
    assert busy.bodies, "round robin should have tried the busy replica"
    metrics = router.metrics()
    assert metric_sum(metrics, "fleetserve:router_retries_total") >= 1
    assert metric_sum(metrics, "fleetserve:router_decisions_total") >= 7


def test_a_mid_stream_failure_ends_with_an_error_event_and_done(start_router, fake_backend):
    broken = fake_backend("break", "broken")
    router = start_router([broken.url], ["--tokenizer", "none"])
    response = httpx.post(f"{router.url}/v1/completions", json=STREAM_BODY, timeout=10)
    assert response.status_code == 200
    events = [block for block in response.text.split("\n\n") if block.strip()]
    # Two whole events, the half event the replica died in is dropped, then the error and [DONE].
    assert len(events) == 4
    assert events[0].startswith('data: {"choices"') and "broken1" in events[1]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].split("data: ", 1)[1])["error"]
    assert error["code"] == "replica_failed" and broken.url in error["message"]
    assert metric_sum(router.metrics(), "fleetserve:router_stream_failures_total") == 1


def test_every_replica_refusing_returns_the_last_refusal(start_router, fake_backend):
    busy = fake_backend("busy", "busy")
    router = start_router([busy.url], ["--tokenizer", "none"])
    response = httpx.post(f"{router.url}/v1/completions", json=STREAM_BODY, timeout=10)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "busy"


def test_requests_waiting_on_a_replica_that_stops_answering_move_elsewhere(start_router, fake_backend):
    hung, good = fake_backend("hang", "hung"), fake_backend(name="good")
    router = start_router([hung.url, good.url], ["--tokenizer", "none", "--policy", "round_robin"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both replicas healthy")
    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(
        httpx.post(f"{router.url}/v1/completions", json=STREAM_BODY, timeout=30)))
    sender.start()
    wait_until(lambda: hung.bodies, 5, "the first request to reach the hung replica")
    stopped_answering = time.monotonic()
    hung.health_status = 503
    sender.join(30)
    assert answers and answers[0].status_code == 200 and b"good0" in answers[0].content
    assert time.monotonic() - stopped_answering < 3.0
    metrics = router.metrics()
    assert metrics.get(f'fleetserve:router_retries_total{{reason="ejected",replica="{hung.url.split("//")[1]}"}}') == 1
