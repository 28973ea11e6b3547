"""What the simulated router shows a policy: a FleetSnapshot built from each replica's router-side load.

Building 64 frozen ReplicaStates per request would cost more than simulating it, so a replica's state is
rebuilt only after the fleet touched that replica. `cached_prefix_tokens` is filled per request, as the
live router does from its prefix index, here by looking the request's shared-prefix blocks up in each
replica's KV cache (an always-fresh index). Only blocks inside the trace's shared prefix can be cached
elsewhere, so only those are looked up.
"""
from __future__ import annotations

import dataclasses

from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState
from fleetserve.sim.replica import SimReplica


class RouterView:
    def __init__(self, replicas: list[SimReplica]) -> None:
        self.replicas = replicas
        self.states: list[ReplicaState] = [replica.router.state() for replica in replicas]
        self.base = FleetSnapshot(tuple(self.states))
        self.dirty: set[int] = set(range(len(replicas)))
        self.cached_tokens: dict[int, int] = {}  # replica index -> cached prompt tokens, for the last request

    def touched(self, index: int) -> None:
        self.dirty.add(index)

    def snapshot(self, shared_hashes: list[int]) -> FleetSnapshot:
        """The snapshot for a request whose shared-prefix blocks have these hashes."""
        if self.dirty:
            for index in self.dirty:
                replica = self.replicas[index]
                replica.router.reported["kv_usage"] = replica.kv.usage
                self.states[index] = replica.router.state()
            self.dirty.clear()
            self.base = FleetSnapshot(tuple(self.states))
        self.cached_tokens = {}
        if not shared_hashes:
            return self.base
        states: list[ReplicaState] | None = None
        for index, replica in enumerate(self.replicas):
            hits = replica.kv.cached_prefix_length(shared_hashes)
            if hits:
                tokens = hits * replica.kv.block_size
                self.cached_tokens[index] = tokens
                states = states or list(self.states)
                states[index] = dataclasses.replace(states[index], cached_prefix_tokens=tokens)
        return FleetSnapshot(tuple(states)) if states is not None else self.base
