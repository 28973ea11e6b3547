"""Where offline work goes, and when it waits at the router: one decision for the live router and the
simulated fleet.

Online requests are routed by the routing policy on the replicas' online load alone (offline requests yield
to them inside each replica: fleetserve.engine.scheduling_policy). An offline request goes to the replica
with the most spare capacity: the fewest online requests in flight, then the fewest offline ones. A replica
has spare capacity while it runs fewer than `online_busy_in_flight` online requests and fewer than
`offline_max_in_flight` offline ones; when none has, the router holds offline requests (first come, first
served) until one has, so they wait at the router rather than in the replicas' queues, where online
requests would find them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetserve.fleet.policy_basics import tie_break
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest


@dataclass(frozen=True)
class OfflineGate:
    # Both default to the engine's 64 sequence slots (`--max-num-seqs`): a replica whose slots online requests
    # fill is busy with online work, and one never holds more offline requests than it can run at once.
    online_busy_in_flight: int = 64  # online requests in flight at which a replica takes no more offline work
    offline_max_in_flight: int = 64  # offline requests in flight a replica may hold

    def __post_init__(self) -> None:
        for name in ("online_busy_in_flight", "offline_max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def has_room(self, replica: ReplicaState) -> bool:
        weight = replica.weight
        return (replica.healthy and replica.in_flight < max(1.0, self.online_busy_in_flight * weight)
                and replica.offline_in_flight < max(1.0, self.offline_max_in_flight * weight))

    def choose(self, request: RouteRequest, snapshot: FleetSnapshot) -> str | None:
        """The replica for an offline request, or None to hold it at the router."""
        open_replicas = [replica for replica in snapshot.replicas if self.has_room(replica)]
        if not open_replicas:
            return None
        return min(open_replicas, key=lambda r: (r.in_flight / r.weight, r.offline_in_flight / r.weight,
                                                 tie_break(request, r))).replica_id
