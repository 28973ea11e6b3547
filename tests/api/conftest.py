"""Real servers for the API tests: `python -m fleetserve.commands.serve` on a free loopback port, on the
real default model. A test module sets SERVER_EXTRA_ARGS to add its own flags (later flags win); it gets
one server for the module, stopped with SIGTERM at the end (and asserted to exit 0)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# The same engine settings as the session `llm` fixture, so greedy outputs can be compared token for token.
# One torch thread per process: the server and this test process share the cores, and oversubscribed
# OpenMP threads spin against each other (10x slower steps on 2 cores).
ENGINE_ARGS = ["--dtype", "float32", "--kv-cache-memory", "256MiB", "--max-num-seqs", "16",
               "--max-num-batched-tokens", "256", "--threads", "1"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        command = [sys.executable, "-m", "fleetserve.commands.serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--no-access-log", *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.health_statuses: list[int] = []

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                status = httpx.get(f"{self.base_url}/health", timeout=2.0).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            self.health_statuses.append(status)
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the server was not ready within {timeout_s}s:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode

    def metrics(self) -> dict[str, float]:
        """/metrics samples keyed by name plus any label other than model_name, e.g.
        'vllm:request_success_total{finished_reason="length"}'."""
        return parse_metrics(httpx.get(f"{self.base_url}/metrics", timeout=10.0).text)

    def wait_idle(self, timeout_s: float = 20.0) -> dict[str, float]:
        """Wait until no request runs or waits and every KV block is free again."""
        deadline = time.monotonic() + timeout_s
        while True:
            samples = self.metrics()
            idle = (samples["vllm:num_requests_running"] == 0 and samples["vllm:num_requests_waiting"] == 0
                    and samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"])
            if idle or time.monotonic() > deadline:
                return samples
            time.sleep(0.1)


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name_and_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_and_labels.partition("{")
        other = [label for label in labels.rstrip("}").split(",") if label and not label.startswith("model_name=")]
        samples[f"{name}{{{','.join(other)}}}" if other else name] = float(value)
    return samples


def launch(args: list[str], log_path: Path) -> ServerProcess:
    server = ServerProcess(args, log_path)
    try:
        server.wait_ready()
    except BaseException:
        server.terminate(5)
        raise
    return server


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The offline engine in this process runs beside a server process: keep to one thread meanwhile."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    args = ENGINE_ARGS + list(getattr(request.module, "SERVER_EXTRA_ARGS", []))
    proc = launch(args, tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    assert proc.terminate() == 0, proc.log_text()


@pytest.fixture
def launch_server(tmp_path):
    """For tests that need a server of their own (e.g. to stop it): launch_server(extra_args)."""
    launched: list[ServerProcess] = []

    def start(extra_args: list[str]) -> ServerProcess:
        launched.append(launch(ENGINE_ARGS + extra_args, tmp_path / f"server{len(launched)}.log"))
        return launched[-1]

    yield start
    for proc in launched:
        proc.terminate(5)


@pytest.fixture(scope="module")
def client(server):
    import openai
    with openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c
