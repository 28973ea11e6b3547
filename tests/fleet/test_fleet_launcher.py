"""`fleetserve serve --replicas N`: the per-replica plan and command lines, and one real launch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from fleetserve.cli import build_parser
from fleetserve.commands.serve_fleet import fleet_plan, replica_argv

from fleet_helpers import free_port, wait_until


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_the_kv_budget_and_threads_are_split_between_replicas():
    args = serve_args("--replicas", "4", "--port", "9000", "--kv-cache-memory", "1GiB", "--threads", "8")
    assert fleet_plan(args) == [(9001 + i, 2, 256 * 2**20) for i in range(4)]
    args = serve_args("--replicas", "3", "--kv-cache-memory-per-replica", "100MiB", "--threads", "2",
                      "--replica-base-port", "7000")
    assert fleet_plan(args) == [(7000, 1, 100 * 2**20), (7001, 1, 100 * 2**20), (7002, 1, 100 * 2**20)]


def test_a_replica_port_may_not_be_the_router_port():
    with pytest.raises(ValueError, match=r"include the router's --port 8001"):
        fleet_plan(serve_args("--replicas", "2", "--port", "8001", "--replica-base-port", "8000"))


def test_replicas_get_every_engine_and_server_flag_but_the_split_and_router_ones():
    args = serve_args("--replicas", "2", "--policy", "prefix", "--max-num-seqs", "8", "--no-prefix-caching",
                      "--served-model-name", "a", "b", "--host", "0.0.0.0", "--threads", "4")
    argv = replica_argv(args, port=8001, threads=2, kv_cache_bytes=1000)
    assert argv[:2] == [sys.executable, "-m"]
    flags = argv[3:]
    assert flags[:8] == ["--host", "127.0.0.1", "--port", "8001", "--threads", "2", "--kv-cache-memory", "1000"]
    rest = flags[8:]
    assert rest[rest.index("--max-num-seqs") + 1] == "8" and "--no-prefix-caching" in rest
    assert rest[rest.index("--served-model-name") + 1:][:2] == ["a", "b"]
    assert "--policy" not in rest and "--replicas" not in rest and "0.0.0.0" not in rest


@pytest.mark.slow
def test_serve_with_two_replicas_routes_and_shuts_down_cleanly(tmp_path):
    port = free_port()
    base = free_port()
    log = open(tmp_path / "fleet.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetserve.cli", "serve", "--replicas", "2", "--port", str(port),
         "--replica-base-port", str(base), "--kv-cache-memory", "96MiB", "--threads", "2", "--dtype", "float32",
         "--max-num-seqs", "4", "--no-access-log", "--shutdown-timeout", "2", "--policy", "prefix"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"

    def healthy_replicas() -> int:
        assert process.poll() is None, (tmp_path / "fleet.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=2).json().get("healthy_replicas", 0)
        except httpx.HTTPError:
            return 0

    try:
        wait_until(lambda: healthy_replicas() == 2, 240, "two healthy replicas", 0.2)
        listing = httpx.get(f"{url}/admin/replicas", timeout=5).json()
        assert listing["policy"] == "prefix"
        assert sorted(r["url"] for r in listing["replicas"]) == [f"http://127.0.0.1:{base}",
                                                                 f"http://127.0.0.1:{base + 1}"]
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3
        replica_metrics = httpx.get(f"http://127.0.0.1:{base}/metrics", timeout=5).text
        assert "fleetserve:kv_cache_total_blocks" in replica_metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        log.close()
    assert code == 0, (tmp_path / "fleet.log").read_text()[-3000:]
    for replica_port in (base, base + 1):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{replica_port}/health", timeout=2)
