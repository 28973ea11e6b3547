"""A fleet on Ray losing a node: the time from the node's removal until the router serves from the lost
replica again, restarted by Ray on another node, and from launch until the fleet first serves.

A Ray cluster on this machine (ray.cluster_utils.Cluster: a head with no CPUs and two worker nodes of one CPU
and one unit of the "a100" pool each, so each holds one replica) runs `fleetserve serve --ray ADDRESS --fleet
a100:2`. Each round removes the older worker node, adds a fresh one at once (the time includes that node's
start), and times until /admin/replicas lists both replicas healthy again, one at a new address.

    .venv/bin/python benchmarks/ray_node_loss.py --rounds 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from ray.cluster_utils import Cluster

NODE = {"num_cpus": 1, "resources": {"a100": 1}}
ARGS = ["--dtype", "float32", "--kv-cache-memory", "96MiB", "--no-access-log", "--shutdown-timeout", "2",
        "--ray-cpus-per-replica", "1", "--fleet", "a100:2"]


def healthy(url: str) -> dict[str, str]:
    try:
        listing = httpx.get(f"{url}/admin/replicas", timeout=5).json()["replicas"]
    except (httpx.HTTPError, ValueError):
        return {}
    return {r["id"]: r["url"] for r in listing if r["healthy"]}


def wait_for(predicate, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("the fleet did not come back")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--out", default="benchmarks/results/ray_node_loss")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(**NODE) for _ in range(2)]
    cluster.wait_for_nodes()
    url = f"http://127.0.0.1:{args.port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    log = open(out / "logs" / "fleet.log", "wb")
    launched = time.monotonic()
    fleet = subprocess.Popen([sys.executable, "-m", "fleetserve.cli", "serve", "--port", str(args.port),
                              "--ray", cluster.address, *ARGS], stdout=log, stderr=subprocess.STDOUT)
    times: list[float] = []
    try:
        replicas = wait_for(lambda: len(r := healthy(url)) == 2 and r)
        first_serving = time.monotonic() - launched
        for _ in range(args.rounds):
            victim = workers.pop(0)
            cluster.remove_node(victim)
            removed = time.monotonic()
            workers.append(cluster.add_node(**NODE))
            replicas = wait_for(lambda: len(r := healthy(url)) == 2 and r != replicas and r)
            times.append(time.monotonic() - removed)
            print(f"back after {times[-1]:.2f}s: {replicas}", flush=True)
    finally:
        fleet.terminate()
        fleet.wait(60)
        cluster.shutdown()
    summary = {"command": " ".join(sys.argv), "launch_to_serving_s": first_serving, "node_loss_to_serving_s": times,
               "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
