"""Clear errors: a backend that is down, a URL that is not an OpenAI server, bad input, bad admin calls.
Fake backends only (no model), so these run in seconds."""
from __future__ import annotations

import subprocess
import sys
import threading
from http.server import HTTPServer, SimpleHTTPRequestHandler

import httpx
import pytest

from fleet_helpers import FakeBackend, Router, free_port


@pytest.fixture
def plain_web_server(tmp_path):
    """http.server serving an empty folder: 404 for /v1/models, like any web server that is not an LLM."""
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_backend_that_is_down_gives_503_with_retry_after_naming_it(start_router):
    down = f"http://127.0.0.1:{free_port()}"
    router = start_router([down], ["--tokenizer", "none"])
    health = httpx.get(f"{router.url}/health", timeout=5)
    assert health.status_code == 503 and down in health.json()["error"]
    response = httpx.post(f"{router.url}/v1/completions", json={"prompt": "hi", "max_tokens": 4}, timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "no_healthy_replica"
    assert down in error["message"] and "ConnectError" in error["message"]
    assert httpx.get(f"{router.url}/v1/models", timeout=5).status_code == 503
    (replica,) = router.replicas().values()
    assert replica["healthy"] is False and "ConnectError" in replica["last_error"]


def test_a_url_that_is_not_an_openai_server_stops_the_router_with_a_clear_error(plain_web_server):
    result = subprocess.run([sys.executable, "-m", "fleetserve.cli", "route", "--backend", plain_web_server,
                             "--port", str(free_port()), "--tokenizer", "none"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"the backend {plain_web_server} is not an OpenAI-compatible server" in result.stderr
    assert "HTTP 404" in result.stderr


def test_a_malformed_backend_url_is_refused():
    result = subprocess.run([sys.executable, "-m", "fleetserve.cli", "route", "--backend", "localhost:8001",
                             "--port", str(free_port()), "--tokenizer", "none"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'localhost:8001' must start with http://" in result.stderr


def test_admin_add_list_remove_and_their_errors(start_router, fake_backend, plain_web_server):
    router = start_router([], ["--tokenizer", "none"])
    assert httpx.get(f"{router.url}/health", timeout=5).status_code == 503
    fake = fake_backend()
    added = httpx.post(f"{router.url}/admin/replicas", json={"url": fake.url + "/v1", "id": "one"}, timeout=10)
    assert added.status_code == 201, added.text
    assert added.json()["healthy"] is True and added.json()["models"] == ["fake-model"]
    assert httpx.get(f"{router.url}/health", timeout=5).status_code == 200

    duplicate = httpx.post(f"{router.url}/admin/replicas", json={"url": fake.url}, timeout=10)
    assert duplicate.status_code == 409 and "already registered as 'one'" in duplicate.json()["error"]["message"]
    not_openai = httpx.post(f"{router.url}/admin/replicas", json={"url": plain_web_server}, timeout=10)
    assert not_openai.status_code == 400 and not_openai.json()["error"]["param"] == "url"
    assert "not an OpenAI-compatible server" in not_openai.json()["error"]["message"]
    missing = httpx.post(f"{router.url}/admin/replicas", json={"id": "x"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "url"
    assert list(router.replicas()) == ["one"]

    unknown = httpx.delete(f"{router.url}/admin/replicas/nope", timeout=10)
    assert unknown.status_code == 404 and "['one']" in unknown.json()["error"]["message"]
    removed = httpx.delete(f"{router.url}/admin/replicas/one", timeout=10)
    assert removed.status_code == 200 and removed.json()["removed"]["url"] == fake.url
    assert router.replicas() == {}
    assert httpx.post(f"{router.url}/v1/completions", json={"prompt": "x"}, timeout=10).status_code == 503


@pytest.mark.parametrize("body, headers, param, message", [
    (b"{not json", {}, None, "not valid JSON"),
    (b"[1, 2]", {}, None, "must be a JSON object"),
    (b"", {}, None, "body is required"),
    (b'{"model": "fake-model"}', {}, "messages", "the field 'messages' is required"),
    (b'{"messages": []}', {}, "messages", "messages"),
    (b'{"messages": [{"content": "hi"}]}', {}, "messages[0].role", "the field 'messages[0].role' is required"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', {}, "max_tokens", "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', {"x-fleetserve-policy": "fastest"},
     "x-fleetserve-policy", "'fastest'"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', {"x-fleetserve-ttft-slo-ms": "soon"},
     "x-fleetserve-ttft-slo-ms", "'soon'"),
])
def test_bad_chat_input_gets_an_openai_400_naming_the_field(router_with_fake, body, headers, param, message):
    router, fake = router_with_fake
    response = httpx.post(f"{router.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json", **headers}, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]
    assert fake.bodies == []


def test_bad_completion_input_gets_an_openai_400(router_with_fake):
    router, fake = router_with_fake
    missing = httpx.post(f"{router.url}/v1/completions", json={"max_tokens": 3}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    wrong = httpx.post(f"{router.url}/v1/completions", json={"prompt": 5}, timeout=10)
    assert wrong.status_code == 400 and "prompt must be a string" in wrong.json()["error"]["message"]
    unknown_model = httpx.post(f"{router.url}/v1/completions", json={"prompt": "x", "model": "gpt-9"}, timeout=10)
    assert unknown_model.status_code == 404 and "['fake-model']" in unknown_model.json()["error"]["message"]
    assert fake.bodies == []


@pytest.fixture(scope="module")
def router_with_fake(tmp_path_factory):
    fake = FakeBackend()
    router = Router([fake.url], tmp_path_factory.mktemp("router") / "router.log", ["--tokenizer", "none"])
    try:
        router.wait_up()
        yield router, fake
    finally:
        router.stop()
        fake.close()
