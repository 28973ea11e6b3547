"""The OfflineGate (where offline work goes and when it waits) and the router's accounting of offline
requests apart from online ones."""
from __future__ import annotations

import pytest

from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.replicas import Replica
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest

OFFLINE = RouteRequest("batch-1", prompt_tokens=100, max_tokens=50, offline=True)


def snapshot(*states: ReplicaState) -> FleetSnapshot:
    return FleetSnapshot(tuple(states))


def test_offline_work_goes_to_the_replica_with_the_least_online_load():
    gate = OfflineGate(online_busy_in_flight=4, offline_max_in_flight=8)
    chosen = gate.choose(OFFLINE, snapshot(ReplicaState("a", in_flight=3), ReplicaState("b", in_flight=1,
                                                                                       offline_in_flight=5),
                                            ReplicaState("c", in_flight=1, offline_in_flight=2)))
    assert chosen == "c"


def test_offline_work_is_held_when_every_replica_is_busy_with_online_work_or_full_of_offline_work():
    gate = OfflineGate(online_busy_in_flight=4, offline_max_in_flight=8)
    busy = snapshot(ReplicaState("a", in_flight=4), ReplicaState("b", in_flight=1, offline_in_flight=8),
                    ReplicaState("c", healthy=False))
    assert gate.choose(OFFLINE, busy) is None
    # A replica with twice the capacity takes twice as much before it counts as busy.
    assert gate.choose(OFFLINE, snapshot(ReplicaState("big", in_flight=4, weight=2.0))) == "big"


def test_bad_gate_settings_are_refused():
    with pytest.raises(ValueError, match="online_busy_in_flight must be >= 1"):
        OfflineGate(online_busy_in_flight=0)


def test_offline_tickets_count_apart_from_the_online_load():
    replica = Replica("r", "http://x", healthy=True)
    online = replica.begin(prefill_tokens=100, decode_tokens=20, now=0.0)
    offline = replica.begin(prefill_tokens=5000, decode_tokens=500, now=0.0, offline=True)
    state = replica.state()
    assert (state.in_flight, state.offline_in_flight, state.queued_work_tokens) == (1, 1, 120)
    replica.first_byte(offline, 1.0)
    assert replica.prefill_tokens_per_s == 0.0  # an offline request's wait says nothing about prefill speed
    replica.finish(offline)
    replica.finish(offline)
    replica.finish(online)
    assert (replica.in_flight, replica.offline_in_flight, replica.waiting_prefill_tokens,
            replica.decoding_tokens) == (0, 0, 0, 0)
