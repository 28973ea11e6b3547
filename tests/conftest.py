"""Shared fixtures: the real default model, loaded once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def llm():
    from fleetserve.engine.llm import LLM
    return LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="256MiB", max_num_seqs=16,
               max_num_batched_tokens=256)


@pytest.fixture(scope="session")
def tokenizer(llm):
    return llm.tokenizer


@pytest.fixture(scope="session")
def chat_prompts(tokenizer) -> list[list[int]]:
    questions = ["What is the capital of France?", "Write a haiku about the sea.",
                 "Explain what a hash table is in two sentences.", "List three prime numbers.",
                 "Tell me a short story about a robot who learns to paint."]
    return [tokenizer.encode_chat([{"role": "user", "content": q}]) for q in questions]
