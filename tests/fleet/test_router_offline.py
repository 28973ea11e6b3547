"""Offline requests through a live router in front of two real replicas: they wait at the router while no
replica has room for offline work, the wait shows on /metrics, online requests pass them, and all finish."""
from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from fleet_helpers import Router, metric_sum, wait_until

pytestmark = pytest.mark.slow


def test_offline_requests_wait_at_the_router_and_online_ones_pass_them(replica_pair, tmp_path):
    router = Router([r.url for r in replica_pair], tmp_path / "router.log",
                    ["--online-busy-in-flight", "1", "--offline-max-in-flight", "1"])
    try:
        router.wait_up()
        wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
        ended: dict[str, float] = {}

        def send(name: str, offline: bool) -> int:
            headers = {"x-service-class": "offline"} if offline else {}
            response = httpx.post(f"{router.url}/v1/completions", headers=headers, timeout=120,
                                  json={"prompt": f"Story {name}:", "max_tokens": 24, "ignore_eos": True,
                                        "temperature": 0})
            ended[name] = time.monotonic()
            return response.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            batch = [pool.submit(send, f"batch{i}", True) for i in range(6)]
            held = wait_until(lambda: metric_sum(router.metrics(), "fleetserve:router_offline_held") or None, 30,
                              "offline requests held at the router", 0.02)
            assert held >= 1
            online = pool.submit(send, "chat", False)
            assert online.result() == 200
            assert [future.result() for future in batch] == [200] * 6
        # Two replicas with room for one offline request each: the last ones waited, the online one did not.
        assert ended["chat"] < max(ended[f"batch{i}"] for i in range(6))
        samples = router.metrics()
        # Every request seen waiting is counted once it passed (how many waited depends on how fast the
        # first ones finished, so the count is bounded by what was seen, not fixed).
        assert held <= metric_sum(samples, "fleetserve:router_offline_held_requests_total") <= 4
        assert metric_sum(samples, "fleetserve:router_offline_held") == 0
        listing = router.replicas().values()
        assert all(r["offline_in_flight"] == 0 and r["in_flight"] == 0 for r in listing)
    finally:
        assert router.stop() == 0, router.log_text()


def test_a_batch_sent_to_the_router_runs_on_the_replicas_as_offline_work(replica_pair, tmp_path):
    import json

    import openai
    router = Router([r.url for r in replica_pair], tmp_path / "router.log",
                    ["--batch-db", str(tmp_path / "batches.sqlite3"), "--offline-max-in-flight", "1"])
    try:
        router.wait_up()
        wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
        lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions",
                  "body": {"model": "SmolLM2-135M-Instruct", "prompt": f"Number {i}:", "max_tokens": 4,
                           "temperature": 0}} for i in range(5)]
        with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            upload = client.files.create(file=("in.jsonl", "\n".join(json.dumps(line) for line in lines).encode()),
                                         purpose="batch")
            batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/completions",
                                          completion_window="24h")
            batch = wait_until(lambda: (b := client.batches.retrieve(batch.id)).status in ("completed", "failed")
                               and b, 120, "the batch to finish", 0.2)
            assert batch.status == "completed" and batch.request_counts.completed == 5, batch
            answers = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
        assert sorted(a["custom_id"] for a in answers) == [f"line-{i}" for i in range(5)]
        assert all(a["response"]["status_code"] == 200 for a in answers)
        # Every line went through the router to a replica, as offline work.
        decisions = metric_sum(router.metrics(), "fleetserve:router_decisions_total")
        assert decisions == 5
    finally:
        assert router.stop() == 0, router.log_text()
