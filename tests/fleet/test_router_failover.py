"""Failover on a live fleet: kill one of two real replicas during a replay (no request is lost), then restart
it."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from fleetserve.bench.client import ClientOptions
from fleetserve.bench.serve import load_tokenizer, replay
from fleetserve.workload.synthetic import synthetic_workload
from fleetserve.workload.traces import synthesize_prompts

from fleet_helpers import Replica, Router, metric_sum, wait_until

pytestmark = pytest.mark.slow

EJECTION_LIMIT_S = 2.0


async def replay_and_kill(router: Router, victim: Replica, victim_id: str) -> tuple[list, float]:
    workload = synthesize_prompts(synthetic_workload(16, rate=8.0, prompt_len="fixed:64", output_len="fixed:24",
                                                     seed=3), load_tokenizer("default"))
    options = ClientOptions(model="SmolLM2-135M-Instruct", timeout_s=120)
    replaying = asyncio.create_task(replay(router.url, workload, options))
    await asyncio.sleep(1.0)
    victim.kill()
    killed_at = time.monotonic()
    async with httpx.AsyncClient() as client:
        while not await _ejected(client, router, victim_id) and time.monotonic() - killed_at < 10:
            await asyncio.sleep(0.05)
    ejected_after = time.monotonic() - killed_at
    return await replaying, ejected_after


async def _ejected(client: httpx.AsyncClient, router: Router, replica_id: str) -> bool:
    listing = (await client.get(f"{router.url}/admin/replicas", timeout=5)).json()["replicas"]
    return not next(r for r in listing if r["id"] == replica_id)["healthy"]


def test_a_killed_replica_loses_no_request_is_ejected_and_readmitted(replica_pair, tmp_path):
    router = Router([r.url for r in replica_pair], tmp_path / "router.log", ["--policy", "round_robin"])
    try:
        router.wait_up()
        wait_until(lambda: all(r["healthy"] for r in router.replicas().values()), 30, "both replicas healthy")
        victim = replica_pair[0]
        victim_id = victim.url.split("//")[1]

        records, ejected_after = asyncio.run(replay_and_kill(router, victim, victim_id))

        assert len(records) == 16
        # Not one is lost: those not started go elsewhere, those streaming go on from the other replica
        # (fleetserve.fleet.stream_migration).
        assert [r.error for r in records if not r.success] == []
        assert ejected_after <= EJECTION_LIMIT_S, f"ejected after {ejected_after:.2f}s"
        metrics = router.metrics()
        retried = metric_sum(metrics, "fleetserve:router_retries_total")
        migrated = metric_sum(metrics, "fleetserve:router_stream_migrations_total")
        print(f"failover: {migrated:.0f} streams went on from the other replica, {retried:.0f} attempts retried, "
              f"ejected {ejected_after:.2f}s after the kill")
        assert metric_sum(metrics, "fleetserve:router_ejections_total") >= 1
        assert metric_sum(metrics, "fleetserve:router_stream_failures_total") == 0

        # The router keeps serving on the survivor.
        for _ in range(2):
            response = httpx.post(f"{router.url}/v1/completions", json={"prompt": "Still there?", "max_tokens": 2},
                                  timeout=60)
            assert response.status_code == 200 and response.headers["x-fleetserve-replica"] != victim_id

        # Restarted on the same port, it is re-admitted and gets requests again.
        replica_pair[0] = restarted = Replica(victim.port, victim.log_path)
        restarted.wait_ready()
        wait_until(lambda: router.replicas()[victim_id]["healthy"], 5, "the restarted replica re-admitted")
        served_by = {httpx.post(f"{router.url}/v1/completions", json={"prompt": f"Back {i}", "max_tokens": 2},
                                timeout=60).headers["x-fleetserve-replica"] for i in range(2)}
        assert victim_id in served_by
        assert metric_sum(router.metrics(), "fleetserve:router_readmissions_total") >= 3  # two joins + one return
    finally:
        router.stop()
