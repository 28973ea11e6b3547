"""The OpenAI API through the real `openai` client against a real server: chat and completions, sync and
async, streaming and not; greedy text equal to the offline engine's; usage equal to the tokenizer's counts;
logprobs, stop strings, n, seeds; models, metrics, and the KV-event feed."""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.model.loader import DEFAULT_MODEL as MODEL
from fleetserve.wire.block_hashes import chain_block_hashes

MAX_TOKENS = 10
GREEDY = dict(temperature=0, max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]


def offline(llm, prompt, max_tokens: int = MAX_TOKENS, **params):
    return llm.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True,
                                                 **params))[0]


def chat_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def expected_chat(llm):
    return {q: offline(llm, llm.chat_prompt(chat_messages(q))) for q in QUESTIONS}


def test_health_answers_503_while_loading_then_200(server):
    assert server.health_statuses[0] == 503 and server.health_statuses[-1] == 200
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}


def test_models_and_version(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(f"{server.base_url}/version").json()["version"]


def test_chat_greedy_matches_offline_engine_and_usage_counts_tokens(client, llm, expected_chat):
    for question in QUESTIONS:
        response = client.chat.completions.create(model=MODEL, messages=chat_messages(question), **GREEDY)
        expected = expected_chat[question]
        choice = response.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content == expected.text
        assert choice.finish_reason == "length"
        assert response.usage.prompt_tokens == len(llm.chat_prompt(chat_messages(question)))
        assert response.usage.completion_tokens == MAX_TOKENS == len(expected.token_ids)
        assert response.usage.total_tokens == response.usage.prompt_tokens + MAX_TOKENS
        assert response.usage.prompt_tokens_details.cached_tokens >= 0
        assert response.id.startswith("chatcmpl-") and response.model == MODEL


def test_chat_stream_sync(client, llm, expected_chat):
    question = QUESTIONS[0]
    stream = client.chat.completions.create(model=MODEL, messages=chat_messages(question), stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_chat[question].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert chunks[-1].usage.prompt_tokens == len(llm.chat_prompt(chat_messages(question)))
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_async_streaming_and_not(server, expected_chat):
    async def main() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="x", max_retries=0) as client:
            async def plain(question: str) -> str:
                response = await client.chat.completions.create(model=MODEL, messages=chat_messages(question),
                                                                **GREEDY)
                return response.choices[0].message.content

            async def streamed(question: str) -> str:
                stream = await client.chat.completions.create(model=MODEL, messages=chat_messages(question),
                                                              stream=True, **GREEDY)
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            plains = await asyncio.gather(*(plain(q) for q in QUESTIONS))
            streams = await asyncio.gather(*(streamed(q) for q in QUESTIONS))
            return plains, streams

    plains, streams = asyncio.run(main())
    expected = [expected_chat[q].text for q in QUESTIONS]
    assert plains == expected and streams == expected


def test_completions_batch_of_text_and_token_prompts_with_n(client, llm, tokenizer):
    text_prompts = ["The capital of France is", "One, two, three,"]
    response = client.completions.create(model=MODEL, prompt=text_prompts, n=2, **GREEDY)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(text_prompts):
        expected = offline(llm, prompt).text
        assert [response.choices[p * 2 + i].text for i in range(2)] == [expected, expected]
    prompt_lens = [len(tokenizer.encode(p)) for p in text_prompts]
    assert response.usage.prompt_tokens == sum(prompt_lens)
    assert response.usage.completion_tokens == 4 * MAX_TOKENS

    ids = [tokenizer.encode(p) for p in text_prompts]
    by_ids = client.completions.create(model=MODEL, prompt=ids, **GREEDY)
    assert [c.text for c in by_ids.choices] == [offline(llm, p).text for p in text_prompts]
    single = client.completions.create(model=MODEL, prompt=ids[0], **GREEDY)
    assert single.choices[0].text == by_ids.choices[0].text


def test_completions_async_stream_with_echo_and_usage(server, llm):
    prompt = "Once upon a time"

    async def main() -> list:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="x", max_retries=0) as client:
            stream = await client.completions.create(model=MODEL, prompt=prompt, echo=True, stream=True,
                                                     stream_options={"include_usage": True}, **GREEDY)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(main())
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == prompt + offline(llm, prompt).text
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS


def test_stop_string_and_stop_token_ids(client, llm, tokenizer):
    prompt = "The capital of France is"
    full = offline(llm, prompt, 16)
    stop = full.text[len(full.text) // 2:][:3]
    assert stop.strip(), full.text
    response = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=16, stop=[stop],
                                         extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full.text[:full.text.index(stop)]
    assert choice.model_extra["stop_reason"] == stop

    stop_id = full.token_ids[3]
    first = full.token_ids.index(stop_id)
    by_id = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=16,
                                      extra_body={"ignore_eos": True, "stop_token_ids": [stop_id]})
    assert by_id.choices[0].finish_reason == "stop"
    assert by_id.usage.completion_tokens == first + 1


def test_chat_logprobs(client, expected_chat):
    question = QUESTIONS[0]
    response = client.chat.completions.create(model=MODEL, messages=chat_messages(question), logprobs=True,
                                              top_logprobs=3, **GREEDY)
    content = response.choices[0].logprobs.content
    assert len(content) == MAX_TOKENS
    pieces = [bytes(entry.bytes).decode() for entry in content]
    # Logprobs list special tokens too (ignore_eos lets <|im_end|> through); the text leaves them out.
    assert "".join(p for p in pieces if not (p.startswith("<|") and p.endswith("|>"))) == expected_chat[question].text
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_completion_logprobs(client):
    response = client.completions.create(model=MODEL, prompt="Hello there", logprobs=2, **GREEDY)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == MAX_TOKENS
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert all(len(top) in (2, 3) for top in logprobs.top_logprobs)
    assert "".join(logprobs.tokens) == response.choices[0].text


def test_sampling_with_seed_repeats_and_n_samples_differ(client):
    kwargs = dict(model=MODEL, messages=chat_messages("Tell me a story."), temperature=1.0, max_tokens=12, n=3,
                  seed=1234)
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1
    assert [c.index for c in first.choices] == [0, 1, 2]


def test_content_parts_min_tokens_and_extra_fields(client, llm):
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "two plus two?"}]
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}],
        max_completion_tokens=4, temperature=0, user="tester",
        extra_body={"min_tokens": 4, "some_future_field": {"x": 1}})
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is\ntwo plus two?"}]
    assert response.usage.prompt_tokens == len(llm.chat_prompt(messages))
    assert response.usage.completion_tokens == 4


def test_repeated_prompt_reports_cached_tokens(client):
    messages = chat_messages("Summarise the history of the printing press in one paragraph, please. " * 3)
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert again.usage.prompt_tokens_details.cached_tokens >= 16


def test_metrics_have_vllm_names(server, client):
    client.completions.create(model=MODEL, prompt="metrics", **GREEDY)
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
                 "vllm:request_success_total", "fleetserve:kv_cache_free_blocks"]:
        assert f'{name}{{' in text and f'model_name="{MODEL}"' in text, name
    samples = server.metrics()
    assert 0 <= samples["vllm:kv_cache_usage_perc"] <= 1
    assert samples["vllm:generation_tokens_total"] >= MAX_TOKENS
    assert samples['vllm:request_success_total{finished_reason="length"}'] >= 1
    assert samples["vllm:time_to_first_token_seconds_count"] >= 1
    assert samples["vllm:inter_token_latency_seconds_count"] >= MAX_TOKENS - 1


def test_kv_events_poll_and_stream(server, client, tokenizer):
    base = server.base_url
    start = httpx.get(f"{base}/v1/kv_events", params={"since": 0}).json()
    assert start["block_size"] == 16
    prompt = ("A brand new prompt about the KV-event feed, long enough to fill at least two whole blocks of "
              "sixteen tokens each, so that the replica publishes a chain of two block hashes to its router.")
    ids = tokenizer.encode(prompt)
    assert len(ids) >= 33
    with httpx.stream("GET", f"{base}/v1/kv_events/stream", params={"since": start["next_seq"]},
                      timeout=30) as stream:
        lines = stream.iter_lines()
        header = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        assert header == {"block_size": 16, "dropped": False}
        client.completions.create(model=MODEL, prompt=ids, max_tokens=1)
        batch = json.loads(next(line for line in lines if line.startswith("data:"))[5:])
        assert batch["seq"] == start["next_seq"]
    after = httpx.get(f"{base}/v1/kv_events", params={"since": start["next_seq"]}).json()
    stored = [e for b in after["batches"] for e in b["events"] if e["type"] == "stored"]
    expected = [f"{h:016x}" for h in chain_block_hashes(ids, 16)]
    published = [h for e in stored for h in e["block_hashes"]]
    assert expected[:2] == published[:2]
    assert stored[0]["parent_hash"] is None and stored[0]["token_count"] == 16 * len(stored[0]["block_hashes"])
    empty = httpx.get(f"{base}/v1/kv_events", params={"since": after["next_seq"]}).json()
    assert empty["batches"] == [] and empty["dropped"] is False
