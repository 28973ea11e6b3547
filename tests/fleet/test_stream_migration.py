"""Request migration on a live fleet: a replica killed (SIGKILL) or frozen (SIGSTOP, so that only health
checks can tell) while it streams; every stream (completions and chat) goes on from the other replica, and
each one's text is the text the survivor gives uninterrupted, greedy or seeded."""
from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from typing import Callable

import httpx
import openai
import pytest

from fleetserve.model.loader import DEFAULT_MODEL as MODEL

from fleet_helpers import Replica, Router, metric_sum, wait_until

pytestmark = pytest.mark.slow

MAX_TOKENS = 24
TOKENS_BEFORE_KILL = 4
PROMPTS = ["The history of Rome", "Once upon a time", "The best way to learn", "In the year 2050",
           "A recipe for bread", "The ocean is"]


def sampling(index: int) -> dict:
    """Even requests greedy, odd ones sampled with a seed."""
    if index % 2 == 0:
        return {"temperature": 0}
    return {"temperature": 0.8, "top_p": 0.95, "seed": 100 + index}


@dataclass
class Streamed:
    text: str = ""
    ids: set = field(default_factory=set)
    chunks_with_text: int = 0
    finish_reason: str | None = None
    completion_tokens: int | None = None
    roles: int = 0  # chat chunks that carry the role


def is_chat(index: int) -> bool:
    return index >= 4


async def stream_one(client: openai.AsyncOpenAI, index: int, result: Streamed, progressed: asyncio.Event,
                     everyone: list[Streamed]) -> None:
    common = dict(model=MODEL, max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
                  extra_body={"ignore_eos": True}, **sampling(index))
    if is_chat(index):
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[index]}],
                                                      **common)
    else:
        stream = await client.completions.create(prompt=PROMPTS[index], **common)
    async for chunk in stream:
        result.ids.add(chunk.id)
        if chunk.usage is not None:
            result.completion_tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text = (choice.delta.content or "") if is_chat(index) else choice.text
            result.roles += bool(is_chat(index) and choice.delta.role)
            result.text += text
            result.chunks_with_text += bool(text)
            result.finish_reason = choice.finish_reason or result.finish_reason
        if all(r.chunks_with_text >= TOKENS_BEFORE_KILL for r in everyone):
            progressed.set()


async def stream_and_fail(router: Router, fail: Callable[[], None]) -> list[Streamed]:
    results = [Streamed() for _ in PROMPTS]
    progressed = asyncio.Event()
    async with openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0,
                                  timeout=120) as client:
        streams = [asyncio.create_task(stream_one(client, i, results[i], progressed, results))
                   for i in range(len(PROMPTS))]
        await asyncio.wait_for(progressed.wait(), 60)
        fail()
        await asyncio.gather(*streams)
    return results


def uninterrupted(survivor: Replica, index: int) -> str:
    body = {"max_tokens": MAX_TOKENS, "ignore_eos": True, **sampling(index)}
    if is_chat(index):
        response = httpx.post(f"{survivor.url}/v1/chat/completions", timeout=60,
                              json={**body, "messages": [{"role": "user", "content": PROMPTS[index]}]})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    response = httpx.post(f"{survivor.url}/v1/completions", timeout=60, json={**body, "prompt": PROMPTS[index]})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def check_every_stream_completed_as_uninterrupted(router: Router, survivor: Replica,
                                                  results: list[Streamed]) -> None:
    metrics = router.metrics()
    resumed = metrics.get('fleetserve:router_stream_migrations_total{outcome="resumed"}', 0)
    print(f"migration: {resumed:.0f} of {len(PROMPTS)} streams went on from the other replica")
    # Round robin put half the streams on the victim, each past its first tokens when it failed.
    assert resumed == len(PROMPTS) // 2
    assert metric_sum(metrics, "fleetserve:router_stream_migrations_total") == resumed
    assert metric_sum(metrics, "fleetserve:router_stream_failures_total") == 0
    for index, result in enumerate(results):
        assert result.finish_reason == "length", (index, result)
        assert result.completion_tokens == MAX_TOKENS, (index, result)
        assert len(result.ids) == 1, f"stream {index} changed its id: {result.ids}"
        assert result.roles == is_chat(index)  # one role chunk, however many replicas a chat stream saw
        assert result.text == uninterrupted(survivor, index), (index, sampling(index))


def start_router(replica_pair: list[Replica], tmp_path) -> Router:
    router = Router([r.url for r in replica_pair], tmp_path / "router.log", ["--policy", "round_robin"])
    router.wait_up()
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
    return router


def test_streams_on_a_killed_replica_go_on_from_the_other_with_the_same_text(replica_pair, tmp_path):
    victim, survivor = replica_pair
    router = start_router(replica_pair, tmp_path)
    try:
        results = asyncio.run(stream_and_fail(router, victim.kill))
        check_every_stream_completed_as_uninterrupted(router, survivor, results)
    finally:
        router.stop()
        replica_pair[0] = restarted = Replica(victim.port, victim.log_path)
        restarted.wait_ready()


def test_streams_on_a_replica_that_stops_answering_move_once_it_is_ejected(replica_pair, tmp_path):
    victim, survivor = replica_pair
    router = start_router(replica_pair, tmp_path)
    victim_id = victim.url.split("//")[1]
    try:
        results = asyncio.run(stream_and_fail(router, lambda: victim.process.send_signal(signal.SIGSTOP)))
        assert not router.replicas()[victim_id]["healthy"]
        check_every_stream_completed_as_uninterrupted(router, survivor, results)
    finally:
        victim.process.send_signal(signal.SIGCONT)
        router.stop()
    wait_until(lambda: httpx.get(f"{victim.url}/health", timeout=2).status_code == 200, 30, "the victim back")
