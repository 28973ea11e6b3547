"""Speculative decoding through the real server and the `openai` client: the greedy answer (streamed and
not) is the offline engine's without speculation, and /metrics counts drafts under vLLM's names."""
from __future__ import annotations

import pytest

from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.model.loader import DEFAULT_MODEL as MODEL
from fleetserve.workload.repetitive import repetitive_messages

SERVER_EXTRA_ARGS = ["--speculative-config", '{"method": "suffix", "num_speculative_tokens": 8}']


@pytest.mark.slow
def test_greedy_answers_are_unchanged_and_drafts_are_counted(server, client, llm):
    messages = repetitive_messages(0)
    expected = llm.generate([llm.chat_prompt(messages)], SamplingParams(temperature=0, max_tokens=48))[0].text
    answer = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
    assert answer.choices[0].message.content == expected
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48,
                                            stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected
    metrics = server.metrics()
    drafted = metrics["vllm:spec_decode_num_draft_tokens_total"]
    accepted = metrics["vllm:spec_decode_num_accepted_tokens_total"]
    assert metrics["vllm:spec_decode_num_drafts_total"] > 0 and drafted >= accepted > 0
    assert metrics['vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"}'] > 0
