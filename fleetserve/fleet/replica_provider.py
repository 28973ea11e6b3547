"""Where replicas come from: what the launcher and the autoscaler's loop ask of a provider of replicas.

Two providers implement it: local processes on this machine (fleetserve.fleet.local_replicas, the default)
and actors on a Ray cluster (fleetserve.fleet.ray_replicas). A started replica is registered with the
router once it answers its health check; the router stays the front door, and the wire the contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class StartedReplica:
    replica_id: str  # the router's name for it
    url: str  # its root URL once known ("" until the provider has it, e.g. a Ray actor still placing)
    pool: str | None = None  # the hardware pool it belongs to (a fleet spec's or plan's hardware name)
    role: str = "mixed"
    handle: object = field(default=None, repr=False)  # the provider's own (a Popen, a Ray actor handle)


class ReplicaProvider(Protocol):
    def start(self, pool: str | None = None, role: str = "mixed") -> StartedReplica:
        """Start one replica (of `pool`'s hardware, where the provider places by pool); returns at once
        or once its URL is known, without waiting for the model to load."""
        ...

    def url_of(self, replica: StartedReplica) -> str:
        """The replica's current URL ("" while unknown); a provider that restarts replicas elsewhere
        answers the new one."""
        ...

    def exited(self, replica: StartedReplica) -> bool:
        """The replica is gone for good (its process ended, or its actor died and will not restart)."""
        ...

    def stop(self, replica: StartedReplica, timeout_s: float) -> None:
        """Ask the replica to drain and exit; force it after `timeout_s`."""
        ...
