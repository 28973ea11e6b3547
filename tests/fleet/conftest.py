"""Fixtures for the router tests; every process a fixture starts is stopped by it."""
from __future__ import annotations

import pytest

from fleet_helpers import FakeBackend, Replica, Router, free_port


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
    folder = tmp_path_factory.mktemp("replicas")
    replicas = [Replica(free_port(), folder / f"replica{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
