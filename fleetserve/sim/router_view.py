"""What the simulated router shows a policy: a FleetSnapshot built from each replica's router-side load.

Building 64 frozen ReplicaStates per request would cost more than simulating it, so a replica's state is
rebuilt only after the fleet touched that replica. `cached_prefix_tokens` is filled per request as the
live router fills it: from a `PrefixIndex` fed by each replica's KV-event feed (its KV manager's own
`stored`/`removed`/`cleared` events). Here the feed has no delay: a replica's events reach the index
before the next request is routed. With `prefix_view="perfect"` the view instead looks the blocks up in
each replica's KV cache; with an undelayed feed both give the same answer, which a test holds.

Only blocks inside a trace's shared prefix can be cached for another request, so only those are looked
up, and only those enter the index (a request's other blocks have hashes no other request uses). For the
same reason the replicas record KV events only from the first request with shared-prefix blocks on: until
then every block any replica published was unique to its request, so the index misses nothing, and a
trace without shared prefixes pays nothing for the feed.
"""
from __future__ import annotations

import dataclasses
import math

from fleetserve.fleet.prefix_index import PrefixIndex
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState
from fleetserve.sim.block_hashes import UNIQUE_HASH_BASE
from fleetserve.sim.config import PREFIX_VIEWS
from fleetserve.sim.replica import SimReplica


class RouterView:
    def __init__(self, replicas: list[SimReplica], prefix_view: str = "events") -> None:
        if prefix_view not in PREFIX_VIEWS:
            raise ValueError(f"unknown prefix view {prefix_view!r}; choose one of {list(PREFIX_VIEWS)}")
        self.replicas = replicas
        self.states: list[ReplicaState] = [replica.router.state() for replica in replicas]
        self.base = FleetSnapshot(tuple(self.states))
        self.dirty: set[int] = set(range(len(replicas)))
        self.cached_tokens: dict[int, int] = {}  # replica index -> cached prompt tokens, for the last request
        self.index: PrefixIndex | None = None
        self.following_feeds = False
        if prefix_view == "events":
            # Nothing expires (a feed's `removed` events say when a block goes) and no replica can hold more
            # blocks than its cache has, so the index never drops an entry the cache still holds.
            self.index = PrefixIndex(ttl_s=math.inf,
                                     max_blocks_per_replica=max(replica.kv.num_blocks for replica in replicas))

    def add_replica(self, replica: SimReplica) -> None:
        """A replica joined the fleet (appended to the list this view was given)."""
        if self.replicas[-1] is not replica:
            self.replicas.append(replica)
        if self.following_feeds:
            replica.kv.record_events = True
        self.states.append(replica.router.state())
        self.dirty.add(len(self.states) - 1)

    def touched(self, index: int) -> None:
        self.dirty.add(index)

    def expect_shared_blocks(self) -> None:
        """A request with shared-prefix blocks is about to be routed: follow every replica's KV events from
        now on (see the module's docstring)."""
        if self.index is not None and not self.following_feeds:
            self.following_feeds = True
            for replica in self.replicas:
                replica.kv.record_events = True

    def snapshot(self, shared_hashes: list[int], now: float) -> FleetSnapshot:
        """The snapshot at `now` for a request whose shared-prefix blocks have these hashes."""
        if self.dirty:
            for index in self.dirty:
                replica = self.replicas[index]
                if self.following_feeds:
                    self._follow_feed(replica)
                replica.router.reported["kv_usage"] = replica.kv.usage
                self.states[index] = replica.router.state()
            self.dirty.clear()
            self.base = FleetSnapshot(tuple(self.states))
        self.cached_tokens = {}
        if not shared_hashes:
            return self.base
        states: list[ReplicaState] | None = None
        prefix_index = self.index
        for index, replica in enumerate(self.replicas):
            if prefix_index is None:
                hits = replica.kv.cached_prefix_length(shared_hashes)
            else:
                hits = prefix_index.cached_blocks(replica.replica_id, shared_hashes, now)
            if hits:
                tokens = hits * replica.kv.block_size
                self.cached_tokens[index] = tokens
                states = states or list(self.states)
                states[index] = dataclasses.replace(states[index], cached_prefix_tokens=tokens)
        return FleetSnapshot(tuple(states)) if states is not None else self.base

    def _follow_feed(self, replica: SimReplica) -> None:
        """Apply the replica's KV events since the last call, as the live router's feed follower does."""
        prefix_index = self.index
        assert prefix_index is not None
        replica_id = replica.replica_id
        unique_base = UNIQUE_HASH_BASE
        for event in replica.kv.take_events():
            kind = event.kind
            if kind == "cleared":
                prefix_index.clear(replica_id)
                continue
            shared = [block_hash for block_hash in event.block_hashes if block_hash < unique_base]
            if not shared:
                continue
            if kind == "stored":
                prefix_index.stored(replica_id, shared)
            else:
                prefix_index.removed(replica_id, shared)
