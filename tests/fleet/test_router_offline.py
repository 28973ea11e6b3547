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
        assert metric_sum(samples, "fleetserve:router_offline_held_requests_total") >= 4
        assert metric_sum(samples, "fleetserve:router_offline_held") == 0
        listing = router.replicas().values()
        assert all(r["offline_in_flight"] == 0 and r["in_flight"] == 0 for r in listing)
    finally:
        assert router.stop() == 0, router.log_text()
