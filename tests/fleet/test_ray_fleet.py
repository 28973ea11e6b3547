"""`fleetserve serve --ray` on a real Ray cluster of three nodes on this machine (ray.cluster_utils.Cluster):
replicas placed by their hardware pool answer through the router, a node that dies mid-load loses no
request that had not started streaming, Ray restarts its replica on a new node and the router takes it
back; and the bad inputs a user meets first get clear errors before any model loads."""
from __future__ import annotations

import concurrent.futures
import sys
import threading

import openai
import pytest

from fleet_helpers import REPLICA_ARGS, Process, free_port, wait_until

ray_cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow

# Each worker node holds one replica: one CPU and one unit of the "a100" pool's resource (the replicas run
# on the CPU; the label is what places them). The head holds none, so two replicas land on two nodes.
NODE = {"num_cpus": 1, "resources": {"a100": 1}}
SERVE_ARGS = [arg for arg in REPLICA_ARGS if arg not in ("--threads", "1")]


@pytest.fixture(scope="module")
def cluster():
    made = ray_cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    made.add_node(**NODE)
    made.add_node(**NODE)
    made.wait_for_nodes()
    yield made
    made.shutdown()


def launch(tmp_path, address: str, *extra: str) -> tuple[Process, str]:
    port = free_port()
    argv = [sys.executable, "-m", "fleetserve.cli", "serve", "--port", str(port), "--ray", address,
            "--ray-cpus-per-replica", "1", *SERVE_ARGS, *extra]
    return Process(argv, tmp_path / "fleet.log"), f"http://127.0.0.1:{port}"


def healthy_replicas(url: str) -> dict[str, str]:
    import httpx
    try:
        listing = httpx.get(f"{url}/admin/replicas", timeout=5).json()["replicas"]
    except (httpx.HTTPError, ValueError):
        return {}
    return {r["id"]: r["url"] for r in listing if r["healthy"]}


def test_replicas_on_ray_nodes_answer_through_the_router_and_survive_a_node_loss(cluster, tmp_path):
    fleet, url = launch(tmp_path, cluster.address, "--fleet", "a100:2")
    try:
        before = wait_until(lambda: len(replicas := healthy_replicas(url)) == 2 and replicas, 180,
                            "two replicas on the Ray nodes healthy behind the router", 0.5)
        streaming = threading.Event()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(i: int) -> tuple[bool, str]:
            """(had it started streaming, the text or the error it ended with)."""
            started = False
            text = ""
            try:
                stream = client.completions.create(model="SmolLM2-135M-Instruct", prompt=f"Count to ten, try {i}:",
                                                   max_tokens=40, temperature=0, stream=True,
                                                   extra_body={"ignore_eos": True})
                for chunk in stream:
                    started = True
                    streaming.set()
                    text += chunk.choices[0].text if chunk.choices else ""
            except openai.APIError as error:
                return started, f"error: {error}"
            return started, text

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = [pool.submit(ask, i) for i in range(6)]
            assert streaming.wait(120)
            cluster.remove_node(cluster.list_all_nodes()[1])  # a worker node, with its replica
            results = [answer.result() for answer in answers]
        for started, text in results:
            if not started:  # not streaming yet: retried on the other replica, never lost
                assert not text.startswith("error"), text
        failed = [text for _, text in results if text.startswith("error")]
        assert all("failed mid-stream" in text or "replica" in text for text in failed), failed
        assert len(results) - len(failed) >= 3  # at most the streams cut on the lost node failed

        # Ray restarts the lost replica's actor on a new node; the router takes it back at its new address.
        cluster.add_node(**NODE)
        after = wait_until(lambda: len(replicas := healthy_replicas(url)) == 2 and replicas, 180,
                           "the lost replica back behind the router", 0.5)
        assert set(after) == set(before) and after != before
        answer = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hello", max_tokens=4)
        assert answer.usage.completion_tokens == 4
    finally:
        assert fleet.stop(60) == 0, fleet.log_text()


def test_the_autoscaler_adds_and_drains_ray_replicas_of_the_fleets_pool(cluster, tmp_path):
    import httpx
    fleet, url = launch(tmp_path, cluster.address, "--fleet", "a100:1", "--autoscale", "target", "--max-replicas",
                        "2", "--target-ongoing-requests", "1", "--autoscale-interval", "0.3", "--upscale-delay", "0",
                        "--downscale-delay", "1")
    try:
        wait_until(lambda: len(healthy_replicas(url)) == 1, 180, "the first Ray replica serving", 0.3)
        counts: set[int] = set()

        def ask(i: int) -> int:
            return httpx.post(f"{url}/v1/completions", timeout=120,
                              json={"prompt": f"Story {i}:", "max_tokens": 160, "ignore_eos": True}).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(ask, i) for i in range(4)]
            while not all(answer.done() for answer in answers):
                counts.add(len(healthy_replicas(url)))
            assert [answer.result() for answer in answers] == [200] * 4
        assert 2 in counts  # a second actor, of the a100 pool, was placed and served
        def events() -> list[str]:
            return [event["event"] for event in httpx.get(f"{url}/admin/scaling", timeout=5).json()["events"]]

        # Drained back to one replica: the other's actor stopped once its requests had ended.
        kinds = wait_until(lambda: "stopped" in (kinds := events()) and kinds, 60, "a drained replica stopped", 0.3)
        assert "scale_up" in kinds and "draining" in kinds, kinds
        assert len(healthy_replicas(url)) == 1
    finally:
        assert fleet.stop(60) == 0, fleet.log_text()


def test_a_pool_no_node_offers_is_refused_at_start(cluster, tmp_path):
    fleet, _ = launch(tmp_path, cluster.address, "--fleet", "a100:1,l4:1")
    code = fleet.process.wait(120)
    log = fleet.log_text()
    assert code == 2, log
    assert "pool 'l4' needs 1 replica(s)" in log and "ray start --resources" in log


def test_a_ray_address_that_does_not_answer_is_refused_at_start(tmp_path):
    fleet, _ = launch(tmp_path, f"127.0.0.1:{free_port()}")
    code = fleet.process.wait(120)
    log = fleet.log_text()
    assert code == 2, log
    assert "no Ray cluster answers at 127.0.0.1:" in log
