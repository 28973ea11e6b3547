"""Schemathesis against the server's own OpenAPI schema: valid and invalid requests to every operation,
bounded, and never a 5xx; the server is healthy and idle afterwards.

The schema comes from an app built here (building one loads no model) rather than from the running
server through schemathesis.pytest.from_fixture, which fails under pytest 9 (it sets Node._nodeid).
Both are the same code, and the requests go to the real server."""
from __future__ import annotations

import ctypes
import ctypes.util

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

# A short context makes random max_tokens values either cheap or refused with a 400.
SERVER_EXTRA_ARGS = ["--max-model-len", "64", "--max-queue", "16", "--max-num-seqs", "8"]
MAX_EXAMPLES = 30
MAX_SAMPLES = 2
MAX_PROMPTS = 4
MAX_NEW_TOKENS = 8



def load_schema():
    from fleetserve.api.server import create_app
    from fleetserve.api.state import ServerOptions, ServerState
    from fleetserve.engine.config import EngineConfig
    loaded = schemathesis.openapi.from_dict(create_app(ServerState(ServerOptions(), EngineConfig())).openapi())
    loaded.config.phases.update(phases=["examples", "fuzzing"])
    loaded.config.generation.update(max_examples=MAX_EXAMPLES)
    return loaded.exclude(path="/v1/kv_events/stream")  # an endless stream by design; tested elsewhere


schema = load_schema()


@pytest.fixture(scope="module", autouse=True)
def ieee_subnormals():
    """Hypothesis refuses to draw floats when subnormals flush to zero, and they do once this process has
    loaded the engine's CPU kernels (built with -ffast-math, whose start-up code sets FTZ/DAZ for the
    thread). Restore the default floating-point environment for this module, and put it back after."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    saved = ctypes.create_string_buffer(64)  # fenv_t is 32 bytes on x86-64 glibc
    if libm.fegetenv(saved) != 0:
        yield
        return
    libm.fesetenv(ctypes.c_void_p(-1))  # FE_DFL_ENV
    yield
    libm.fesetenv(saved)


def keep_generation_small(body: object) -> None:
    """Shrink only what is valid and merely expensive (n, batch size, max_tokens); invalid values stay."""
    if not isinstance(body, dict):
        return
    for key, limit in (("n", MAX_SAMPLES), ("best_of", MAX_SAMPLES), ("max_tokens", MAX_NEW_TOKENS),
                       ("max_completion_tokens", MAX_NEW_TOKENS)):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            body[key] = limit
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        del prompt[MAX_PROMPTS:]


@pytest.mark.slow
@schema.parametrize()
# Derandomized: the same bounded set of cases every run, so CI is repeatable; widen MAX_EXAMPLES locally.
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case, server):
    keep_generation_small(case.body)
    response = case.call(base_url=server.base_url, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text


@pytest.mark.slow
def test_server_is_healthy_and_idle_after_fuzzing(server):
    # Runs after the fuzzing above (pytest keeps file order within a module).
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    samples = server.wait_idle()
    assert samples["vllm:num_requests_running"] == 0
    assert samples["fleetserve:kv_cache_free_blocks"] == samples["fleetserve:kv_cache_total_blocks"]
    response = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "Hello", "max_tokens": 2},
                          timeout=60)
    assert response.status_code == 200, response.text
