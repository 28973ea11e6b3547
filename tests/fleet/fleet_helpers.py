"""Processes for the router tests: fake OpenAI backends (no model, in a thread), real replicas
(`python -m fleetserve.commands.serve`, one torch thread, small KV budget) and routers
(`python -m fleetserve.cli route`)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

REPLICA_ARGS = ["--dtype", "float32", "--kv-cache-memory", "48MiB", "--max-num-seqs", "8",
                "--max-num-batched-tokens", "256", "--threads", "1", "--no-access-log", "--shutdown-timeout", "2"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} within {timeout_s}s")


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = samples.get(name, 0.0) + float(value)
    return samples


def metric_sum(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == prefix)


class Process:
    """A child process with its output in a log file; stop() sends SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


class Replica(Process):
    def __init__(self, port: int, log_path: Path, extra: list[str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        super().__init__([sys.executable, "-m", "fleetserve.commands.serve", "--port", str(port), *REPLICA_ARGS,
                          *(extra or [])], log_path)

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, timeout_s, f"replica {self.url} not ready:\n{self.log_text()}", 0.2)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)


class Router(Process):
    def __init__(self, backends: list[str], log_path: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "fleetserve.cli", "route", "--port", str(self.port), "--no-access-log"]
        for backend in backends:
            argv += ["--backend", backend]
        super().__init__(argv + list(extra or []), log_path)

    def wait_up(self, timeout_s: float = 60.0) -> None:
        def up() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"router exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/health", timeout=2.0)
                return True
            except httpx.HTTPError:
                return False
        wait_until(up, timeout_s, f"router {self.url} not up:\n{self.log_text()}", 0.1)

    def replicas(self) -> dict[str, dict]:
        listing = httpx.get(f"{self.url}/admin/replicas", timeout=5).json()["replicas"]
        return {r["id"]: r for r in listing}

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=5).text)


class FakeOpenAIHandler(BaseHTTPRequestHandler):
    """What every fake backend answers alike: JSON replies, GET /v1/models with one model, GET /health."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._send(200, {"status": "ok"})


def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A server for `handler` on a free loopback port, serving from a daemon thread; (server, its URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class FakeBackend:
    """An OpenAI-shaped server without a model. `mode`: "ok" streams 5 events; "break" sends 2 events and
    drops the connection; "busy" answers every generation request with 503 (but passes health checks);
    "hang" never answers a generation request; "not_openai" answers 404 everywhere. `health_status` is
    what GET /health answers. Records request bodies."""

    def __init__(self, mode: str = "ok", name: str = "fake") -> None:
        self.mode = mode
        self.name = name
        self.health_status = 200
        self.bodies: list[bytes] = []
        self.released = threading.Event()
        backend = self

        class Handler(FakeOpenAIHandler):
            def do_GET(self) -> None:
                if backend.mode == "not_openai":
                    self._send(404, {"detail": "Not Found"})
                elif self.path.startswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                elif self.path == "/health":
                    self._send(backend.health_status, {"status": "ok"})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                backend.bodies.append(body)
                if backend.mode == "hang":
                    backend.released.wait(60)
                    return
                if backend.mode == "busy":
                    self._send(503, {"error": {"message": "busy", "type": "service_unavailable"}})
                    return
                if not json.loads(body).get("stream"):
                    self._send(200, {"id": "x", "object": "text_completion", "model": "fake-model",
                                     "choices": [{"index": 0, "text": backend.name, "finish_reason": "length"}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(2 if backend.mode == "break" else 5):
                    event = f'data: {{"choices":[{{"index":0,"text":"{backend.name}{i} "}}]}}\n\n'.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    time.sleep(0.02)
                if backend.mode == "break":
                    self.wfile.write(b"10\r\ndata: {\"choic")  # half an event, then the connection drops
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                done = b"data: [DONE]\n\n"
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

        self.server, self.url = serve_in_thread(Handler)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def two_replicas(folder: Path):
    """Start two real replicas of the default model, yield them, stop them (a fixture's body)."""
    replicas = [Replica(free_port(), folder / f"replica{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
