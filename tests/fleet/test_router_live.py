"""A live fleet: two real replicas of the default model behind a router process (CLI)."""
from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from fleet_helpers import Router, metric_sum, wait_until

pytestmark = pytest.mark.slow

PREFIX_HITS = "vllm:prefix_cache_hits_total"


@pytest.fixture(scope="module")
def live_router(replica_pair, tmp_path_factory):
    router = Router([r.url for r in replica_pair], tmp_path_factory.mktemp("live") / "router.log")
    try:
        router.wait_up()
        wait_until(lambda: all(r["healthy"] and r["kv_feed"] == "streaming" for r in router.replicas().values()),
                   30, "both replicas healthy with their KV feeds")
        yield router
    finally:
        assert router.stop() == 0, router.log_text()


@pytest.fixture(scope="module")
def client(live_router):
    import openai
    with openai.OpenAI(base_url=f"{live_router.url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_the_openai_client_works_through_the_router(client, replica_pair):
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8,
                                           temperature=0)
    assert whole.choices[0].message.content and whole.usage.completion_tokens <= 8
    chunks = list(client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8,
                                                 temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content  # greedy: same answer on either replica
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    direct = httpx.post(f"{replica_pair[0].url}/v1/chat/completions", timeout=60,
                        json={"messages": messages, "max_tokens": 8, "temperature": 0}).json()
    assert direct["choices"][0]["message"]["content"] == streamed
    text = client.completions.create(model="SmolLM2-135M-Instruct", prompt="One, two,", max_tokens=4, temperature=0)
    assert text.choices[0].text


def test_streamed_events_arrive_as_the_replica_sends_them(live_router):
    body = {"prompt": "Count: one, two, three,", "max_tokens": 6, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{live_router.url}/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        replica = response.headers["x-fleetserve-replica"]
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 7 and events[-1] == "data: [DONE]"
    assert replica in live_router.replicas()


def test_round_robin_spreads_requests_over_both_replicas(live_router):
    def send(i: int) -> str:
        response = httpx.post(f"{live_router.url}/v1/completions", timeout=60,
                              headers={"x-fleetserve-policy": "round_robin"},
                              json={"prompt": f"Request {i}:", "max_tokens": 2, "temperature": 0})
        assert response.status_code == 200, response.text
        return response.headers["x-fleetserve-replica"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert set(pool.map(send, range(4))) == set(live_router.replicas())
    decisions = live_router.metrics()
    assert sum(v for k, v in decisions.items()
               if k.startswith("fleetserve:router_decisions_total") and 'policy="round_robin"' in k) == 4


def test_session_policy_keeps_a_session_on_one_replica(live_router):
    seen = set()
    for turn in range(3):
        response = httpx.post(f"{live_router.url}/v1/completions", timeout=60,
                              headers={"x-fleetserve-policy": "session", "x-session-id": "alice"},
                              json={"prompt": f"Turn {turn}:", "max_tokens": 2, "temperature": 0})
        seen.add(response.headers["x-fleetserve-replica"])
    assert len(seen) == 1


@pytest.mark.parametrize("topic", ["the history of bridges", "how bees make honey"])
def test_prefix_policy_sends_a_repeated_prompt_where_it_is_cached(live_router, replica_pair, topic):
    replicas = {r.url.split("//")[1]: r for r in replica_pair}
    prompt = " ".join(f"Paragraph {i} about {topic} goes into some detail here." for i in range(24))
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2, "temperature": 0}
    headers = {"x-fleetserve-policy": "prefix"}
    first = httpx.post(f"{live_router.url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert first.status_code == 200
    holder = first.headers["x-fleetserve-replica"]
    hits_before = metric_sum(replicas[holder].metrics(), PREFIX_HITS)
    router_hits_before = metric_sum(live_router.metrics(), "fleetserve:router_estimated_prefix_hit_tokens_total")
    second = httpx.post(f"{live_router.url}/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert second.headers["x-fleetserve-replica"] == holder
    assert metric_sum(replicas[holder].metrics(), PREFIX_HITS) - hits_before >= 200
    router_hits = metric_sum(live_router.metrics(), "fleetserve:router_estimated_prefix_hit_tokens_total")
    assert router_hits - router_hits_before >= 200


def test_the_kv_feed_tells_the_router_what_a_replica_cached_behind_its_back(live_router, replica_pair):
    replica = replica_pair[1]
    replica_id = replica.url.split("//")[1]
    prompt = " ".join(f"Line {i} of a ledger kept by a lighthouse keeper." for i in range(24))
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 2, "temperature": 0}
    blocks_before = _indexed_blocks(live_router, replica_id)
    assert httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    wait_until(lambda: _indexed_blocks(live_router, replica_id) >= blocks_before + 10, 10,
               "the replica's stored blocks to reach the router over its KV-event feed")
    hits_before = metric_sum(live_router.metrics(), "fleetserve:router_estimated_prefix_hit_tokens_total")
    routed = httpx.post(f"{live_router.url}/v1/chat/completions", json=body, timeout=120,
                        headers={"x-fleetserve-policy": "prefix"})
    assert routed.headers["x-fleetserve-replica"] == replica_id
    assert metric_sum(live_router.metrics(), "fleetserve:router_estimated_prefix_hit_tokens_total") - hits_before >= 200


def _indexed_blocks(router: Router, replica_id: str) -> float:
    return router.metrics().get(f'fleetserve:router_replica_indexed_blocks{{replica="{replica_id}"}}', 0.0)


def test_router_metrics_show_load_health_and_decisions(live_router):
    metrics = live_router.metrics()
    for replica_id in live_router.replicas():
        assert metrics[f'fleetserve:router_replica_healthy{{replica="{replica_id}"}}'] == 1.0
        assert f'fleetserve:router_replica_in_flight{{replica="{replica_id}"}}' in metrics
    assert metric_sum(metrics, "fleetserve:router_decisions_total") > 0
    assert metric_sum(metrics, "fleetserve:router_requests_total") > 0
