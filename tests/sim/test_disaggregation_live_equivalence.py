"""The prefill/decode decision is the same live and simulated: a live router (its RouterState, the code
that routes every HTTP request) and a simulated fleet, given replicas of the same roles carrying the same
load, pick the same decode replica and the same prefill replica (or none) for the same request."""
from __future__ import annotations

import random

import pytest

from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.disaggregation import DisaggregationRule
from fleetserve.fleet.policies import make_policy
from fleetserve.fleet.replicas import Replica
from fleetserve.fleet.request_info import RoutedCall
from fleetserve.fleet.router_state import RouterState
from fleetserve.perf.kv_link import KVLink, LinkKind
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.fleet import Arrival, SimFleet
from fleetserve.sim.replica import SimReplica
from fleetserve.workload.spec import RequestSpec

from sim_helpers import LinearPerf

LINK = KVLink(LinkKind("test", 1e9, 1e-3, "a test link"), bytes_per_token=1000)
ROLES = ["prefill", "prefill", "decode", "decode", "decode"]


class RecordingRule:
    def __init__(self, rule: DisaggregationRule) -> None:
        self.rule = rule
        self.chosen: dict[str, str | None] = {}

    def choose_prefill(self, request, decode, snapshot):
        self.chosen[request.request_id] = self.rule.choose_prefill(request, decode, snapshot)
        return self.chosen[request.request_id]


class RecordingPolicy:
    def __init__(self, name: str) -> None:
        self.policy = make_policy(name)
        self.name = self.policy.name
        self.chosen: dict[str, str] = {}

    def choose(self, request, snapshot):
        self.chosen[request.request_id] = self.policy.choose(request, snapshot)
        return self.chosen[request.request_id]


def live_router(rule: DisaggregationRule, policy: str) -> RouterState:
    router = RouterState(RouterConfig(policy=policy, disaggregation=rule), tokenizer=None)
    for index, role in enumerate(ROLES):
        router.registry.add(Replica(f"r{index}", f"http://127.0.0.1:{9000 + index}", healthy=True, role=role))
    return router


def sim_fleet(rule: RecordingRule, policy: RecordingPolicy) -> SimFleet:
    replicas = [SimReplica(f"r{index}", "test", LinearPerf(kv_tokens=16_384), ReplicaConfig(), 8192,  # type: ignore[arg-type]
                           SimOptions(), role=role) for index, role in enumerate(ROLES)]
    return SimFleet(replicas, policy, disaggregation=Disaggregation(LINK, rule))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["conditional", "always", "never"])
@pytest.mark.parametrize("policy", ["least_loaded", "round_robin"])
def test_the_live_router_and_the_simulated_fleet_decide_alike(mode, policy):
    rng = random.Random(f"{mode}-{policy}")
    rule = DisaggregationRule(mode, min_remote_prefill_tokens=400, max_prefill_queue=2)
    remote_prefills = 0
    for trial in range(40):
        router = live_router(rule, policy)
        recording_rule, recording_policy = RecordingRule(rule), RecordingPolicy(policy)
        fleet = sim_fleet(recording_rule, recording_policy)
        # The same load on both: requests in flight, prompts waiting for prefill, outputs still to decode.
        for index in range(len(ROLES)):
            for _ in range(rng.randrange(4)):
                prefill, decode = rng.randrange(0, 2000), rng.randrange(1, 300)
                router.registry.get(f"r{index}").begin(prefill, decode, 0.0)
                fleet.replicas[index].router.begin(prefill, decode, 0.0)
                fleet.view.touched(index)
        prompt, output = rng.randrange(8, 1500), rng.randrange(1, 64)
        request_id = f"q{trial}"
        routing = router.choose(RoutedCall("completions", None, False, prompt, output, None,
                                           prompt_token_ids=list(range(prompt))), policy, set(),
                                {"x-request-id": request_id})
        fleet._route(Arrival(RequestSpec(request_id, 0.0, prompt, output), 0.0, 0.0))
        assert routing.replica.replica_id == recording_policy.chosen[request_id], (trial, prompt)
        prefill = routing.prefill.replica_id if routing.prefill is not None else None
        assert prefill == recording_rule.chosen.get(request_id), (trial, prompt, mode)
        remote_prefills += prefill is not None
    # Not a vacuous agreement: conditional made both kinds of decision.
    assert remote_prefills == {"never": 0, "always": 40}.get(mode, remote_prefills)
    assert mode != "conditional" or 0 < remote_prefills < 40
