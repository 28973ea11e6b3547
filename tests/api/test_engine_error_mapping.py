"""Each async-engine refusal becomes the HTTP answer a client can act on: a shutting-down engine is 503 (go to
another replica), a full queue is 429 with Retry-After (come back soon)."""
from __future__ import annotations

from fleetserve.api.generation import translate_engine_error
from fleetserve.engine.async_engine import EngineShuttingDownError, QueueFullError


def test_a_shutting_down_engine_is_503_not_a_full_queue():
    error = translate_engine_error(EngineShuttingDownError("the engine is shutting down"))
    assert (error.status, error.code) == (503, "service_unavailable")
    assert "shutting down" in error.message and "another replica" in error.message


def test_a_full_queue_is_429_with_the_reason_and_retry_after():
    error = translate_engine_error(QueueFullError("3 requests are already waiting (max_queue 3)"))
    assert (error.status, error.code) == (429, "queue_full")
    assert "3 requests are already waiting (max_queue 3)" in error.message
    assert error.headers is not None and int(error.headers["Retry-After"]) >= 1
