"""The simulated router learns cached prefixes as the live router does: a PrefixIndex fed by each replica's
KV events. With a feed that has no delay it must see exactly what a look into the replicas' caches sees."""
from dataclasses import astuple
from pathlib import Path

import pytest

from fleetserve.fleet.policies import make_policy
from fleetserve.sim.block_hashes import shared_prefix_hashes
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.fleet import SimFleet
from fleetserve.sim.replica import SimReplica
from fleetserve.sim.router_view import RouterView
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.traces import read_trace

from sim_helpers import LinearPerf

MOONCAKE = Path(__file__).resolve().parents[1] / "data" / "mooncake_synthetic_head200.jsonl"


def replicas(prefix_view: str, kv_tokens: int = 6000) -> list[SimReplica]:
    # A small cache, so prefixes are evicted and `removed` events matter too.
    return [SimReplica(f"r{i}", "test", LinearPerf(kv_tokens=kv_tokens), ReplicaConfig(), 8192,  # type: ignore[arg-type]
                       SimOptions(prefix_view=prefix_view)) for i in range(3)]


def workload():
    return read_trace(str(MOONCAKE)).head(120).scaled(20.0)


def replay(prefix_view: str, policy: str) -> tuple[list, list[SimReplica], SimFleet]:
    fleet_replicas = replicas(prefix_view)
    fleet = SimFleet(fleet_replicas, make_policy(policy))
    return fleet.run(workload()), fleet_replicas, fleet


@pytest.mark.parametrize("policy", ["prefix", "two_choice"])
def test_the_event_fed_index_routes_exactly_as_a_perfect_view(policy):
    events, event_replicas, fleet = replay("events", policy)
    perfect, perfect_replicas, _ = replay("perfect", policy)
    assert [astuple(record) for record in events] == [astuple(record) for record in perfect]
    assert [r.stats() for r in event_replicas] == [r.stats() for r in perfect_replicas]
    hits = sum(replica.kv.prefix_cache_hits for replica in event_replicas)
    assert hits > 0, "the workload must reuse prefixes, or this test proves nothing"
    assert fleet.view.index is not None and any(fleet.view.index.blocks_held(r.replica_id) for r in event_replicas)


def test_the_index_holds_what_each_cache_holds_once_the_feed_is_followed():
    _, fleet_replicas, fleet = replay("events", "prefix")
    view = fleet.view
    for index in range(len(fleet_replicas)):
        view.touched(index)
    view.snapshot([], fleet.clock)  # follows every feed
    assert view.index is not None
    block_size = fleet_replicas[0].kv.block_size
    prefixes = [hashes for spec in workload() if (hashes := shared_prefix_hashes(spec, block_size))]
    assert prefixes
    for replica in fleet_replicas:
        assert view.index.blocks_held(replica.replica_id) > 0
        for hashes in prefixes:
            assert (view.index.cached_blocks(replica.replica_id, hashes, fleet.clock)
                    == replica.kv.cached_prefix_length(hashes))


def test_feeds_are_followed_from_the_first_request_with_shared_blocks_on():
    fleet_replicas = replicas("events")
    fleet = SimFleet(fleet_replicas, make_policy("prefix"))
    alone = Workload([RequestSpec(f"u{i}", 0.1 * i, 100, 10) for i in range(6)], "unique", "test")
    fleet.run(alone)
    assert not fleet.view.following_feeds and not any(r.kv.record_events for r in fleet_replicas)
    _, shared_replicas, shared_fleet = replay("events", "prefix")
    assert shared_fleet.view.following_feeds and all(r.kv.record_events for r in shared_replicas)


def test_an_unknown_prefix_view_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="events.*perfect"):
        SimOptions(prefix_view="psychic")
    with pytest.raises(ValueError, match="events.*perfect"):
        RouterView(replicas("events"), "psychic")
