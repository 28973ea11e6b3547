"""Every refusal in the OpenAI error shape, with the right status and the offending field named, and a good
request served right after each one."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from fleetserve.model.loader import DEFAULT_MODEL as MODEL

MAX_BODY = 64 * 1024
MAX_QUEUE = 2
# One running request at a time and a queue of two, so a full queue is easy to reach.
SERVER_EXTRA_ARGS = ["--max-num-seqs", "1", "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(MAX_BODY)]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def assert_error(response: httpx.Response, status: int, param: str | None = None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post(COMPLETIONS, json={"model": MODEL, "prompt": "Hello", "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1}, "presence_penalty"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": 7}, "stop"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "priority": "high"}, "priority"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "priority": 1.5}, "priority"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "service_class": "batch"}, "service_class"),
])
def test_invalid_chat_fields_are_400_naming_the_field(http, body, param):
    assert_error(http.post(CHAT, json=body), 400, param)
    assert_still_serving(http)


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL}, "prompt"),
    ({"model": MODEL, "prompt": ""}, "prompt"),
    ({"model": MODEL, "prompt": []}, "prompt"),
    ({"model": MODEL, "prompt": [1, "two"]}, "prompt"),
    ({"model": MODEL, "prompt": [10**9]}, "prompt"),
    ({"model": MODEL, "prompt": [-1]}, "prompt"),
    ({"model": MODEL, "prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"model": MODEL, "prompt": "hi", "echo": True, "logprobs": 1}, "echo"),
    ({"model": MODEL, "prompt": "hi", "suffix": "end"}, "suffix"),
    ({"model": MODEL, "prompt": "hi", "priority": "1"}, "priority"),
])
def test_invalid_completion_fields_are_400_naming_the_field(http, body, param):
    assert_error(http.post(COMPLETIONS, json=body), 400, param)
    assert_still_serving(http)


def test_priority_and_service_class_are_served_and_a_bad_class_header_is_400(http):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "priority": -3}
    assert http.post(COMPLETIONS, json={**body, "service_class": "offline"}).status_code == 200
    assert http.post(COMPLETIONS, json=body, headers={"x-service-class": "offline"}).status_code == 200
    assert http.post(COMPLETIONS, json={**body, "service_tier": "flex"}).status_code == 200
    assert_error(http.post(COMPLETIONS, json=body, headers={"x-service-class": "later"}), 400, "x-service-class")
    assert_still_serving(http)


def test_malformed_json_and_non_object_bodies(http):
    error = assert_error(http.post(CHAT, content=b'{"model": "x", "messages": [', headers={
        "content-type": "application/json"}), 400)
    assert "JSON" in error["message"]
    assert_error(http.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)
    assert_error(http.post(CHAT, content=b"hello", headers={"content-type": "text/plain"}), 400)
    assert_error(http.post(CHAT), 400)
    assert_still_serving(http)


def test_unknown_model_is_404_model_not_found(client, http):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-imaginary", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert "gpt-imaginary" in raised.value.message
    assert_error(http.post(COMPLETIONS, json={"model": "nope", "prompt": "hi"}), 404, "model", "model_not_found")
    assert_still_serving(http)


def test_prompt_plus_max_tokens_beyond_context_is_400_with_both_lengths(client, http, tokenizer):
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=MODEL, prompt="Hello there", max_tokens=9000)
    message = raised.value.message
    n = len(tokenizer.encode("Hello there"))
    assert f"({n} tokens)" in message and "9000" in message and "8192" in message
    huge = [100] * 8200
    error = assert_error(http.post(COMPLETIONS, json={"model": MODEL, "prompt": huge, "max_tokens": 1}), 400,
                         "prompt")
    assert "8200" in error["message"] and "8192" in error["message"]
    assert_still_serving(http)


def test_unknown_route_and_wrong_method_in_the_same_shape(http):
    error = assert_error(http.get("/v1/nothing-here"), 404)
    assert "/v1/nothing-here" in error["message"]
    assert_error(http.get(CHAT), 405)
    assert_still_serving(http)


def test_oversized_body_is_413_by_content_length_and_by_streamed_size(server, http):
    big = {"model": MODEL, "prompt": "x" * (MAX_BODY + 10)}
    error = assert_error(http.post(COMPLETIONS, json=big), 413, code="request_too_large")
    assert str(MAX_BODY) in error["message"]

    def chunks():  # no Content-Length: the limit must hold on the bytes actually received
        yield b'{"model": "' + MODEL.encode() + b'", "prompt": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"y" * 4096
        yield b'"}'

    with httpx.Client(base_url=server.base_url, timeout=60) as fresh:
        assert_error(fresh.post(COMPLETIONS, content=chunks(), headers={"content-type": "application/json"}), 413)
    assert_still_serving(http)


def test_full_queue_is_429_with_retry_after_and_leaving_clients_free_their_places(server, http):
    long_request = {"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 400, "ignore_eos": True,
                    "stream": True}

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            async def occupy() -> None:
                async with client.stream("POST", COMPLETIONS, json=long_request) as response:
                    async for _ in response.aiter_lines():
                        pass

            async def wait_for(running: int, waiting: int) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    samples = await asyncio.to_thread(server.metrics)
                    if (samples["vllm:num_requests_running"], samples["vllm:num_requests_waiting"]) == (running,
                                                                                                         waiting):
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"never saw {running} running and {waiting} waiting: {samples}")

            # One runs (max-num-seqs 1), then two wait: the queue is full.
            tasks = [asyncio.create_task(occupy())]
            await wait_for(1, 0)
            tasks += [asyncio.create_task(occupy()) for _ in range(MAX_QUEUE)]
            await wait_for(1, MAX_QUEUE)
            refused = await client.post(COMPLETIONS, json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
            assert_error(refused, 429, code="queue_full")
            assert int(refused.headers["retry-after"]) >= 1
            for task in tasks:  # the waiting ones have no response yet; they leave before their first token
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    samples = server.wait_idle()
    assert samples["vllm:num_requests_running"] == 0 and samples["vllm:num_requests_waiting"] == 0
    assert samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"]
    assert_still_serving(http)


def test_unknown_fields_are_ignored_and_the_server_is_healthy(http):
    response = http.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 2, "frobnicate": True, "metadata": {"a": 1}})
    assert response.status_code == 200, response.text
    assert http.get("/health").status_code == 200


def test_echo_of_an_out_of_vocabulary_token_id_is_a_400(server):
    """Found by the schemathesis run: {"prompt": [-1], "echo": true} used to crash the echo decode (500)."""
    import httpx
    response = httpx.post(server.base_url + "/v1/completions", json={"prompt": [-1], "echo": True, "max_tokens": 2})
    assert response.status_code == 400
    assert "-1" in response.json()["error"]["message"] and response.json()["error"]["param"] == "prompt"
