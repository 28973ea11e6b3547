"""The registry refuses a bad URL and a duplicate with their own exception types, which the admin API
turns into 400 and 409 (tests/fleet/test_router_errors.py checks those over HTTP)."""
from __future__ import annotations

import pytest

from fleetserve.fleet.replicas import DuplicateReplica, Replica, ReplicaRegistry, normalize_backend_url
from fleetserve.wire.urls import InvalidServerURL


def test_urls_are_reduced_to_the_server_root_and_bad_ones_are_named():
    assert normalize_backend_url(" http://10.0.0.5:8000/v1/ ") == "http://10.0.0.5:8000"
    for bad in ("localhost:8001", "ftp://host", "http://"):
        with pytest.raises(InvalidServerURL, match=f"backend URL {bad!r} must start with http://"):
            normalize_backend_url(bad)


def test_a_second_replica_with_the_same_id_or_url_is_refused():
    registry = ReplicaRegistry()
    registry.add(Replica("one", "http://127.0.0.1:8001"))
    with pytest.raises(DuplicateReplica, match="id 'one' is already registered"):
        registry.add(Replica("one", "http://127.0.0.1:8002"))
    with pytest.raises(DuplicateReplica, match="already registered as 'one'"):
        registry.add(Replica("two", "http://127.0.0.1:8001"))
    assert [r.replica_id for r in registry] == ["one"]
