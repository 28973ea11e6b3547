"""`fleetserve route`, `fleetserve sim` and `fleetserve bench serve` run without importing torch or
transformers, so the router and the simulator start fast and need none of the engine's dependencies.

Each command runs in a fresh interpreter, far enough to use its real code paths (the default model's
tokenizer and chat template, the roofline model, the benchmark report), and then lists the heavy modules
it has imported. The router and the benchmark read the default model's tokenizer from its converted
folder, so the model is converted beforehand, in this process: converting a GGUF file is the engine's job
and does need transformers. The simulator needs only the architecture, which it reads from the GGUF file
itself, so it runs on an empty model cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers")


@pytest.fixture(scope="module", autouse=True)
def converted_default_model() -> None:
    from fleetserve.model.loader import resolve_model
    resolve_model(None)


def heavy_modules_after(code: str, env: dict[str, str] | None = None) -> list[str]:
    """Run `code` in a fresh interpreter (with these extra environment variables); the heavy modules it
    left imported."""
    script = textwrap.dedent(code) + f"\nimport sys\nprint('HEAVY:', *[m for m in {HEAVY!r} if m in sys.modules])\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY:"), result.stdout[-2000:]
    return last.split()[1:]


def test_sim_imports_no_torch_even_with_no_converted_model(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    empty_cache = tmp_path / "model-cache"
    assert heavy_modules_after(f"""
        from fleetserve.cli import main
        assert main(["sim", "--synthetic", "rate=20,n=40,prompt=uniform:32:256,output=uniform:4:32,groups=2,prefix=64",
                     "--fleet", "cpu:2", "--policy", "prefix", "--json", {str(out)!r}]) == 0
    """, env={"FLEETSERVE_CACHE": str(empty_cache)}) == []
    assert json.loads(out.read_text())["completed"] == 40
    assert not any(empty_cache.rglob("config.json")), "the simulator converted the model"


def test_route_imports_no_torch() -> None:
    # The router with the default model's tokenizer answers a chat request (503: its one backend is down),
    # which renders the chat template and hashes the prompt's blocks.
    assert heavy_modules_after("""
        from starlette.testclient import TestClient
        from fleetserve.cli import build_parser
        from fleetserve.commands.route import router_config
        from fleetserve.fleet.router import create_router_app, load_prompt_tokenizer
        from fleetserve.fleet.router_state import RouterState

        argv = ["route", "--backend", "http://127.0.0.1:9", "--policy", "prefix"]
        args = build_parser(argv).parse_args(argv)
        config = router_config(args, args.backend, args.tokenizer)
        app = create_router_app(RouterState(config, load_prompt_tokenizer(config.tokenizer)))
        with TestClient(app) as client:
            response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503, response.text
    """) == []


class _StubOpenAI(BaseHTTPRequestHandler):
    """Lists one model and streams a two-token completion to every POST."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._send("application/json", json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        chunks = [{"choices": [{"index": 0, "text": "a", "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]}]
        body = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
        self._send("text/event-stream", body.encode())

    def _send(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_bench_serve_imports_no_torch(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "bench.json"
    try:
        assert heavy_modules_after(f"""
            from fleetserve.cli import main
            assert main(["bench", "serve", "--url", "http://127.0.0.1:{server.server_address[1]}", "--synthetic",
                         "rate=50,n=4,prompt=fixed:32,output=fixed:2", "--no-progress", "--json", {str(out)!r}]) == 0
        """) == []
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(out.read_text())["completed"] == 4
