"""The bucket policy: a capacity plan's length buckets and pool shares, then least loaded inside the pool."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import httpx
import pytest

from fleetserve.fleet.bucket_policy import BucketPolicy
from fleetserve.fleet.policies import (
    ALL_POLICY_NAMES,
    POLICY_NAMES,
    PolicyOptions,
    available_policy_names,
    make_policy,
)
from fleetserve.fleet.policy_basics import NoHealthyReplica
from fleetserve.fleet.replicas import Replica, parse_backend
from fleetserve.fleet.routing_plan import Buckets, RoutingPlan
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest

# Prompts up to 512 tokens are short, longer ones long; one output bucket.
BUCKETS = Buckets(input_edges=(512, 8192), output_edges=(1024,))
SHORT, LONG = (0, 0), (1, 0)


def plan(weights: dict[tuple[int, int], dict[str, float]]) -> RoutingPlan:
    return RoutingPlan(BUCKETS, weights)


def request(request_id: str = "r", prompt_tokens: int = 100, max_tokens: int = 64) -> RouteRequest:
    return RouteRequest(request_id=request_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens)


def fleet(*replicas: ReplicaState) -> FleetSnapshot:
    return FleetSnapshot(tuple(replicas))


MIXED = fleet(ReplicaState("a100-0", pool="a100"), ReplicaState("l4-0", pool="l4"), ReplicaState("l4-1", pool="l4"))


def test_each_bucket_goes_to_its_pool():
    policy = BucketPolicy(plan({SHORT: {"l4": 1.0}, LONG: {"a100": 1.0}}))
    short = {policy.choose(request(f"s{i}", prompt_tokens=200), MIXED) for i in range(50)}
    long = {policy.choose(request(f"l{i}", prompt_tokens=4000), MIXED) for i in range(50)}
    assert short == {"l4-0", "l4-1"} and long == {"a100-0"}


def test_inside_the_pool_the_least_loaded_replica_takes_the_request():
    policy = BucketPolicy(plan({SHORT: {"l4": 1.0}}))
    snapshot = fleet(ReplicaState("a100-0", pool="a100"), ReplicaState("l4-0", pool="l4", waiting_prefill_tokens=900),
                     ReplicaState("l4-1", pool="l4", decoding_tokens=100))
    assert {policy.choose(request(f"r{i}"), snapshot) for i in range(20)} == {"l4-1"}


def test_the_shares_of_a_bucket_are_honoured_over_many_requests():
    policy = BucketPolicy(plan({SHORT: {"a100": 0.2, "l4": 0.8}}))
    chosen = Counter(policy.choose(request(f"req-{i}"), MIXED) for i in range(2000))
    l4_share = (chosen["l4-0"] + chosen["l4-1"]) / 2000
    assert abs(l4_share - 0.8) < 0.03 and abs(chosen["a100-0"] / 2000 - 0.2) < 0.03


def test_a_request_always_draws_the_same_pool():
    policy = BucketPolicy(plan({SHORT: {"a100": 0.5, "l4": 0.5}}))
    draws = [policy.pools_for(request(f"r{i}")) for i in range(100)]
    assert draws == [BucketPolicy(policy.plan).pools_for(request(f"r{i}")) for i in range(100)]
    assert {tuple(draw) for draw in draws} == {("a100", "l4"), ("l4", "a100")}


def test_a_pool_with_no_share_is_never_drawn():
    policy = BucketPolicy(plan({SHORT: {"a100": 0.0, "l4": 1.0}}))
    assert {policy.choose(request(f"r{i}"), MIXED) for i in range(300)} == {"l4-0", "l4-1"}


def test_an_unhealthy_pool_passes_its_requests_to_the_bucket_s_next_pool_by_share():
    policy = BucketPolicy(plan({SHORT: {"a100": 0.6, "h100": 0.3, "l4": 0.1}}))
    snapshot = fleet(ReplicaState("a100-0", pool="a100", healthy=False), ReplicaState("h100-0", pool="h100"),
                     ReplicaState("l4-0", pool="l4"))
    chosen = Counter(policy.choose(request(f"r{i}"), snapshot) for i in range(500))
    # a100's share moves to h100 (the larger of the others); l4 keeps only its own tenth.
    assert chosen["a100-0"] == 0 and chosen["h100-0"] > 400 and 20 < chosen["l4-0"] < 90


def test_a_pool_missing_from_the_fleet_falls_back_to_the_least_loaded_replica():
    policy = BucketPolicy(plan({SHORT: {"h100": 1.0}}))
    snapshot = fleet(ReplicaState("a100-0", pool="a100", waiting_prefill_tokens=500), ReplicaState("l4-0", pool="l4"),
                     ReplicaState("x", waiting_prefill_tokens=100))
    assert {policy.choose(request(f"r{i}"), snapshot) for i in range(20)} == {"l4-0"}


def test_a_bucket_without_shares_goes_to_the_least_loaded_replica():
    policy = BucketPolicy(plan({SHORT: {"l4": 1.0}}))
    snapshot = fleet(ReplicaState("a100-0", pool="a100"), ReplicaState("l4-0", pool="l4", decoding_tokens=50))
    assert policy.pools_for(request(prompt_tokens=3000)) == []
    assert policy.choose(request(prompt_tokens=3000), snapshot) == "a100-0"


def test_lengths_past_the_last_edge_count_in_the_last_bucket():
    policy = BucketPolicy(plan({LONG: {"a100": 1.0}}))
    assert policy.pools_for(request(prompt_tokens=100_000, max_tokens=50_000)) == ["a100"]


def test_no_healthy_replica_is_refused():
    policy = BucketPolicy(plan({SHORT: {"l4": 1.0}}))
    with pytest.raises(NoHealthyReplica):
        policy.choose(request(), fleet(ReplicaState("l4-0", pool="l4", healthy=False)))


def test_bucket_needs_a_plan():
    with pytest.raises(ValueError, match=r"--plan PLAN\.json.*fleetserve plan"):
        make_policy("bucket")
    routing = plan({SHORT: {"l4": 1.0}})
    policy = make_policy("bucket", PolicyOptions(routing_plan=routing))
    assert isinstance(policy, BucketPolicy) and policy.plan is routing


def test_only_options_with_a_plan_offer_the_bucket_policy():
    assert "bucket" not in POLICY_NAMES and "bucket" in ALL_POLICY_NAMES
    assert available_policy_names(PolicyOptions()) == POLICY_NAMES
    assert "bucket" in available_policy_names(PolicyOptions(routing_plan=plan({SHORT: {"l4": 1.0}})))


@pytest.mark.parametrize("spec, expected", [
    ("http://10.0.0.5:8000", ("http://10.0.0.5:8000", None)),
    ("a100=http://10.0.0.5:8000", ("http://10.0.0.5:8000", "a100")),
    ("l4-24gb=127.0.0.1:8001", ("127.0.0.1:8001", "l4-24gb")),
    ("http://host:8000/v1?x=y", ("http://host:8000/v1?x=y", None)),
])
def test_a_backend_may_name_its_pool(spec, expected):
    assert parse_backend(spec) == expected


def test_a_replica_s_pool_reaches_its_state_and_description():
    replica = Replica("a", "http://a:1", pool="a100")
    assert replica.state().pool == "a100" and replica.describe()["pool"] == "a100"
    assert Replica("b", "http://b:1").state().pool is None


def test_the_router_routes_by_a_plan_to_backends_named_with_their_pool(start_router, fake_backend, tmp_path):
    a100, l4 = fake_backend(name="a100"), fake_backend(name="l4")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"routing": plan({SHORT: {"l4": 1.0}, LONG: {"a100": 1.0}}).to_jsonable()}))
    router = start_router([f"a100={a100.url}", l4.url], ["--tokenizer", "none", "--policy", "bucket",
                                                        "--plan", str(plan_path)])
    assert {r["id"]: r["pool"] for r in router.replicas().values()} == {a100.url[7:]: "a100", l4.url[7:]: None}
    added = httpx.post(f"{router.url}/admin/replicas", json={"url": l4.url, "id": "l4-0", "pool": "l4"}, timeout=10)
    assert added.status_code == 409  # the same backend twice, pool or not
    httpx.delete(f"{router.url}/admin/replicas", params={"url": l4.url}, timeout=10).raise_for_status()
    added = httpx.post(f"{router.url}/admin/replicas", json={"url": l4.url, "id": "l4-0", "pool": "l4"}, timeout=10)
    assert added.status_code == 201 and added.json()["pool"] == "l4"
    assert router.replicas()["l4-0"]["pool"] == "l4"
    misspelled = httpx.post(f"{router.url}/admin/replicas", json={"url": "http://127.0.0.1:9", "pool": "a10"},
                            timeout=10)
    assert misspelled.status_code == 400 and "'a10' is not one of the routing plan's pools (a100, l4)" in \
        misspelled.json()["error"]["message"]

    def served_by(prompt: str) -> str:
        response = httpx.post(f"{router.url}/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=10)
        response.raise_for_status()
        return response.json()["choices"][0]["text"]

    assert {served_by(f"hi {i}") for i in range(4)} == {"l4"}
    assert {served_by(f"{i} " + "long prompt " * 1000) for i in range(4)} == {"a100"}


def test_the_router_refuses_the_bucket_policy_without_a_plan():
    result = subprocess.run([sys.executable, "-m", "fleetserve.cli", "route", "--policy", "bucket",
                             "--tokenizer", "none"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--plan PLAN.json" in result.stderr


def test_the_router_refuses_a_backend_labelled_with_a_pool_the_plan_does_not_name(tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"routing": plan({SHORT: {"l4": 1.0}, LONG: {"a100": 1.0}}).to_jsonable()}))
    result = subprocess.run([sys.executable, "-m", "fleetserve.cli", "route", "--policy", "bucket", "--plan",
                             str(plan_path), "--backend", "a10=http://127.0.0.1:9", "--tokenizer", "none"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "pool 'a10' is not one of the routing plan's pools (a100, l4)" in result.stderr
