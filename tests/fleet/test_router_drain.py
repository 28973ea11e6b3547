"""Draining a replica through the router's admin API (fake backends, no model): it gets no new requests,
shows as draining, and a router whose every replica drains answers 503 saying so."""
from __future__ import annotations

import httpx

from fleet_helpers import wait_until


def test_a_drained_replica_gets_no_new_requests(fake_backend, start_router):
    first, second = fake_backend(name="first"), fake_backend(name="second")
    router = start_router([first.url, second.url], ["--policy", "round_robin"])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "both backends healthy")
    first_id = next(rid for rid, r in router.replicas().items() if r["url"] == first.url)
    answer = httpx.post(f"{router.url}/admin/replicas/{first_id}/drain", timeout=5)
    assert answer.status_code == 200 and answer.json()["draining"]["draining"] is True
    assert router.replicas()[first_id]["draining"] and router.replicas()[first_id]["healthy"]
    before = len(first.bodies)
    chosen = {httpx.post(f"{router.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
              .headers["x-fleetserve-replica"] for _ in range(6)}
    assert first_id not in chosen and len(chosen) == 1 and len(first.bodies) == before


def test_draining_every_replica_leaves_none_to_route_to(fake_backend, start_router):
    only = fake_backend()
    router = start_router([only.url])
    wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 10, "the backend healthy")
    (only_id,) = router.replicas()
    assert httpx.post(f"{router.url}/admin/replicas/{only_id}/drain", timeout=5).status_code == 200
    response = httpx.post(f"{router.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=10)
    assert response.status_code == 503 and "draining" in response.json()["error"]["message"]
    missing = httpx.post(f"{router.url}/admin/replicas/nobody/drain", timeout=5)
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
    assert httpx.get(f"{router.url}/admin/scaling", timeout=5).status_code == 404  # `route` keeps no fleet
