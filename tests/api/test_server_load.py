"""Operational behaviour: clients that leave free their KV blocks at once, 256 concurrent streams lose and
duplicate nothing, and SIGTERM drains (finish in-flight, refuse new work, exit 0)."""
from __future__ import annotations

import asyncio
import json
import signal
import time

import httpx
import openai
import pytest

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.model.loader import DEFAULT_MODEL as MODEL

SERVER_EXTRA_ARGS = ["--max-num-seqs", "64", "--max-num-batched-tokens", "512"]
LONG = {"model": MODEL, "prompt": "Write a very long story about a lighthouse keeper.", "max_tokens": 2000,
        "ignore_eos": True}


def test_disconnect_mid_stream_aborts_and_frees_blocks(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
            lines = response.iter_lines()  # (breaking out of a for loop over it would close the stream)
            events = 0
            while events < 3:
                events += next(lines).startswith("data:")
            busy = server.metrics()
            assert busy["vllm:num_requests_running"] == 1
            assert busy["fleetserve:kv_cache_free_blocks"] < busy["fleetserve:kv_cache_total_blocks"]
        # Leaving the `with` closes the connection mid-stream.
    started = time.monotonic()
    samples = server.wait_idle(timeout_s=10)
    assert samples["vllm:num_requests_running"] == 0
    assert samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"]
    assert time.monotonic() - started < 5
    assert samples['vllm:request_success_total{finished_reason="abort"}'] >= 1


def test_disconnect_while_waiting_for_a_non_streamed_answer_aborts(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=LONG, timeout=httpx.Timeout(60, read=1.5))
    samples = server.wait_idle(timeout_s=10)
    assert samples["vllm:num_requests_running"] == 0
    assert samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"]


@pytest.mark.slow
def test_256_concurrent_streams_lose_and_duplicate_nothing(server, llm):
    num_clients, max_tokens = 256, 8
    questions = [f"Give me one fact about the number {i}." for i in range(16)]
    messages = [[{"role": "user", "content": q}] for q in questions]
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    expected = [c.text for c in llm.generate([llm.chat_prompt(m) for m in messages], greedy)]
    before = server.metrics()

    async def main() -> list:
        limits = httpx.Limits(max_connections=num_clients + 8, max_keepalive_connections=num_clients + 8)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300)) as http_client, \
                openai.AsyncOpenAI(base_url=server.api_url, api_key="x", max_retries=0,
                                   http_client=http_client) as client:
            async def one(i: int) -> tuple[int, str, int, int]:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=messages[i % len(messages)], max_tokens=max_tokens, temperature=0,
                    stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
                text, content_chunks, usage = "", 0, None
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            text += choice.delta.content
                            content_chunks += 1
                return i, text, content_chunks, usage.completion_tokens

            return await asyncio.gather(*(one(i) for i in range(num_clients)), return_exceptions=True)

    results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    for i, text, content_chunks, completion_tokens in results:
        assert completion_tokens == max_tokens
        assert 0 < content_chunks <= max_tokens
        assert text == expected[i % len(expected)], (i, text, expected[i % len(expected)])
    after = server.wait_idle()
    assert after["vllm:num_requests_running"] == 0
    assert after["fleetserve:kv_cache_free_blocks"] == after["fleetserve:kv_cache_total_blocks"]
    finished = 'vllm:request_success_total{finished_reason="length"}'
    assert after[finished] - before.get(finished, 0) == num_clients
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == num_clients * max_tokens


def _read_events(response: httpx.Response) -> list[dict | str]:
    events: list[dict | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.slow
def test_sigterm_finishes_in_flight_refuses_new_and_exits_0(launch_server):
    server = launch_server(["--shutdown-timeout", "6"])
    short = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "ignore_eos": True,
             "stream": True}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=short) as finishing, \
                http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as cut_off:
            assert finishing.status_code == cut_off.status_code == 200
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with httpx.Client(base_url=server.base_url, timeout=10) as fresh:
                refused = fresh.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "service_unavailable"
                assert fresh.get("/health").status_code == 503
            finished_events = _read_events(finishing)
            cut_events = _read_events(cut_off)
    assert finished_events[-1] == "[DONE]"
    assert finished_events[-2]["choices"][0]["finish_reason"] == "length"
    assert cut_events[-1] == "[DONE]"
    assert cut_events[-2]["error"]["code"] == "service_unavailable"
    assert server.process.wait(30) == 0, server.log_text()
