"""The prefill/decode decision (fleetserve.fleet.disaggregation) on hand-made snapshots."""
from __future__ import annotations

import pytest

from fleetserve.fleet.disaggregation import DisaggregationRule, check_role, decode_candidates
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest

DECODE = ReplicaState("d", role="decode")


def snapshot(*prefills: ReplicaState, decode: ReplicaState = DECODE) -> FleetSnapshot:
    return FleetSnapshot((decode, *prefills))


def request(prompt: int) -> RouteRequest:
    return RouteRequest("q", prompt, 16)


def test_conditional_sends_only_the_uncached_part_past_the_threshold_away():
    rule = DisaggregationRule(min_remote_prefill_tokens=500)
    fleet = snapshot(ReplicaState("p", role="prefill"))
    assert rule.choose_prefill(request(501), DECODE, fleet) == "p"
    assert rule.choose_prefill(request(500), DECODE, fleet) is None
    cached = ReplicaState("d", role="decode", cached_prefix_tokens=300)
    assert rule.choose_prefill(request(700), cached, snapshot(ReplicaState("p", role="prefill"), decode=cached)) is None


def test_conditional_keeps_prompts_local_while_the_prefill_pool_is_backed_up():
    rule = DisaggregationRule(min_remote_prefill_tokens=100, max_prefill_queue=2)
    busy = snapshot(ReplicaState("p1", role="prefill", in_flight=2), ReplicaState("p2", role="prefill", in_flight=3))
    assert rule.choose_prefill(request(1000), DECODE, busy) is None
    assert DisaggregationRule("always").choose_prefill(request(1000), DECODE, busy) == "p1"


def test_the_least_loaded_healthy_prefill_replica_is_chosen():
    rule = DisaggregationRule(min_remote_prefill_tokens=0)
    fleet = snapshot(ReplicaState("p1", role="prefill", waiting_prefill_tokens=900),
                     ReplicaState("p2", role="prefill", waiting_prefill_tokens=100),
                     ReplicaState("p3", role="prefill", healthy=False))
    assert rule.choose_prefill(request(200), DECODE, fleet) == "p2"


def test_mixed_replicas_and_never_prefill_locally():
    fleet = snapshot(ReplicaState("p", role="prefill"))
    mixed = ReplicaState("m")
    assert DisaggregationRule("always").choose_prefill(request(5000), mixed, fleet) is None
    assert DisaggregationRule("never").choose_prefill(request(5000), DECODE, fleet) is None
    assert DisaggregationRule("always").choose_prefill(request(5000), DECODE, snapshot()) is None


def test_policies_never_see_prefill_replicas_as_decoders():
    fleet = snapshot(ReplicaState("p", role="prefill"), ReplicaState("m"))
    assert [r.replica_id for r in decode_candidates(fleet).replicas] == ["d", "m"]


@pytest.mark.parametrize("kwargs, message", [({"mode": "sometimes"}, "unknown disaggregation mode"),
                                             ({"min_remote_prefill_tokens": -1}, "min_remote_prefill_tokens"),
                                             ({"max_prefill_queue": 0}, "max_prefill_queue")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DisaggregationRule(**kwargs)
    with pytest.raises(ValueError, match="unknown replica role"):
        check_role("prefil")
