"""`bench serve` end to end against a live `fleetserve serve` (a subprocess on a free loopback port, on
the default model): ten requests of the Azure slice, shortened, every one accounted for."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetserve.bench.metrics import parse_slo, summarize
from fleetserve.bench.serve import read_request_log, run
from fleetserve.commands.bench_arguments import add_bench_serve_arguments

AZURE = Path(__file__).parent.parent / "data" / "azure_llm_2023_conv_head300.csv"
ENGINE_ARGS = ["--dtype", "float32", "--kv-cache-memory", "256MiB", "--max-num-seqs", "16",
               "--max-num-batched-tokens", "256"]
MAX_PROMPT, MAX_OUTPUT = 128, 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server at {url} was not healthy within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetserve.commands.serve", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log", *ENGINE_ARGS],
            stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, process, log)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.slow
def test_replays_the_azure_slice_and_accounts_for_every_request(live_url: str, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_bench_serve_arguments(parser)
    slo = "ttft=60000,e2e=120000"
    args = parser.parse_args([
        "--url", live_url, "--trace", str(AZURE), "--num-requests", "10", "--speedup", "2",
        "--max-prompt-tokens", str(MAX_PROMPT), "--max-output-tokens", str(MAX_OUTPUT), "--timeout", "300",
        "--slo", slo, "--json", str(tmp_path / "run.json"), "--requests-out", str(tmp_path / "requests.jsonl"),
        "--plot", str(tmp_path / "plots"), "--no-progress"])
    assert run(args) == 0

    result = json.loads((tmp_path / "run.json").read_text())
    assert result["completed"] + result["failed"] + result["not_sent"] == 10
    assert result["completed"] == 10, result["failures_by_kind"]
    lines = [json.loads(text) for text in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(f"azure-{index}" for index in range(10))
    for line in lines:
        # Token ids and ignore_eos make the server process exactly the intended lengths.
        assert line["prompt_tokens"] == line["spec"]["prompt_tokens"] <= MAX_PROMPT
        assert line["output_tokens"] == line["spec"]["output_tokens"] <= MAX_OUTPUT
        assert len(line["token_times_s"]) >= 1

    recomputed = summarize(read_request_log(tmp_path / "requests.jsonl"), None, parse_slo(slo))
    assert {key: result[key] for key in recomputed} == recomputed
    assert result["total_output_tokens"] == sum(line["spec"]["output_tokens"] for line in lines)
    assert result["config"]["model"] and any("x2" in step for step in result["config"]["transforms"])
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == ["latency_cdf.png", "timeline.png"]
