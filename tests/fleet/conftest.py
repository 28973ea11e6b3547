"""Fixtures for the router tests; every process a fixture starts is stopped by it."""
from __future__ import annotations

import pytest

from fleet_helpers import FakeBackend, Router, two_replicas


@pytest.fixture
def fake_backend():
    made: list[FakeBackend] = []

    def make(mode: str = "ok", name: str = "fake") -> FakeBackend:
        made.append(FakeBackend(mode, name))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def start_router(tmp_path):
    started: list[Router] = []

    def start(backends: list[str], extra: list[str] | None = None, wait: bool = True) -> Router:
        router = Router(backends, tmp_path / f"router{len(started)}.log", extra)
        started.append(router)
        if wait:
            router.wait_up()
        return router

    yield start
    for router in started:
        router.stop()


@pytest.fixture(scope="session")
def replica_pair(tmp_path_factory):
    """Two real replicas of the default model, shared by the live and failover tests."""
    yield from two_replicas(tmp_path_factory.mktemp("replicas"))
