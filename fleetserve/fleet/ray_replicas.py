"""Replicas as actors on a Ray cluster (`fleetserve serve --ray [ADDRESS]`), behind fleetserve's router.

Each replica is a Ray actor that runs one `fleetserve serve` process on its node, listening on the node's
address; the router reaches it over HTTP as any replica (the wire stays the contract). The actor asks Ray
for the replica's CPUs and GPUs and, when the replica belongs to a hardware pool (a fleet spec's or a
plan's hardware name, e.g. "a100"), for one unit of the custom resource of that name, so a pool lands on
the nodes that advertise it (`ray start --resources '{"a100": 8}'`).

If a replica's node dies, or its server process exits, Ray restarts the actor where resources allow, on a
new address: the router ejects the old address by its health checks and the launcher registers the new
one (fleetserve.fleet.url_watch). Ray is an optional extra: `pip install 'fleetserve[ray]'`.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetserve.fleet.local_replicas import term_with_parent
from fleetserve.fleet.replica_provider import StartedReplica
from fleetserve.wire.urls import server_url

logger = logging.getLogger("fleetserve.fleet")

NAMESPACE = "fleetserve"
PROBE_TIMEOUT_S = 3.0
URL_TIMEOUT_S = 2.0


class RayUnavailable(ValueError):
    """Ray is not installed, or the cluster cannot be reached or cannot place the replicas."""


@dataclass(frozen=True)
class RayPlacement:
    """What each replica's actor asks of Ray."""
    cpus: float = 1.0
    gpus: float = 0.0

    def resources(self, pool: str | None) -> dict[str, float]:
        return {pool: 1.0} if pool else {}


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray, which is not installed: pip install 'fleetserve[ray]'") from None
    return ray


def probe_address(address: str) -> None:
    """Fail fast on an address where nothing listens: Ray itself retries for minutes before it gives up."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray {address!r} is not a Ray address; give HOST:PORT of the head node's GCS "
                             f"(as `ray start --head` prints), 'auto' for the cluster on this machine, or nothing "
                             f"to start a local Ray instance")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise RayUnavailable(f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
                             f"`ray start --head`, or check the address and that the port is reachable") from None


def connect(address: str | None) -> None:
    """Join the cluster at `address` (None: start a local Ray instance)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address is not None and address != "auto":
        probe_address(address)
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, configure_logging=False,
             **({} if address else {"include_dashboard": False}))


def check_placement(pools: Mapping[str | None, int], placement: RayPlacement) -> None:
    """Refuse at start a fleet that no node of the cluster could hold: each pool's replicas need nodes with
    the pool's resource and the replica's CPUs and GPUs."""
    ray = import_ray()
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for pool, count in pools.items():
        needs = {"CPU": placement.cpus, "GPU": placement.gpus, **placement.resources(pool)}
        needs = {name: amount for name, amount in needs.items() if amount > 0}
        room = sum(int(min(node.get(name, 0.0) / amount for name, amount in needs.items())) for node in nodes)
        if room >= count:
            continue
        what = ", ".join(f"{amount:g} {name}" for name, amount in needs.items())
        label = f"pool {pool!r}" if pool else "the fleet"
        offered = "; ".join(", ".join(f"{v:g} {k}" for k, v in sorted(node.items()) if not k.startswith(
            ("node:", "memory", "object_store"))) for node in nodes) or "no live nodes"
        hint = (f"start nodes with `ray start --resources '{{\"{pool}\": N}}'`" if pool else
                "lower --ray-cpus-per-replica or --ray-gpus-per-replica, or add nodes")
        raise RayUnavailable(f"{label} needs {count} replica(s) of {what} each, but the cluster's nodes hold only "
                             f"{room} ({offered}); {hint}")


class ReplicaServer:
    """The actor: one replica's server process on this node. If the process dies, the actor dies with it,
    so that Ray restarts both (on a new address)."""

    def __init__(self, argv: list[str]) -> None:
        import ray
        host = ray.util.get_node_ip_address()
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        # The interpreter of this node's worker, not the driver's path; the last --host/--port win. No
        # setsid: a Ray worker may lead its session already.
        self.process = subprocess.Popen([sys.executable, *argv[1:], "--host", host, "--port", str(port)],
                                        preexec_fn=term_with_parent)
        self.address = server_url(host, port)
        self.stopping = False
        threading.Thread(target=self._exit_with_server, daemon=True).start()

    def _exit_with_server(self) -> None:
        code = self.process.wait()
        if not self.stopping:
            logger.error("fleetserve: the replica at %s exited with code %s; restarting its actor", self.address, code)
            os._exit(1)

    def url(self) -> str:
        return self.address

    def stop(self, timeout_s: float) -> int:
        self.stopping = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


class RayReplicas:
    """The ReplicaProvider that places replicas as Ray actors."""

    def __init__(self, argv: list[str], placement: RayPlacement, max_restarts: int = -1) -> None:
        ray = import_ray()
        self.ray = ray
        self.argv = argv
        self.placement = placement
        self.max_restarts = max_restarts
        self.actor_class = ray.remote(ReplicaServer)
        self._ids = itertools.count(1)
        self._dead: set[str] = set()

    def start(self, pool: str | None = None, role: str = "mixed") -> StartedReplica:
        actor = self.actor_class.options(num_cpus=self.placement.cpus, num_gpus=self.placement.gpus,
                                         resources=self.placement.resources(pool), max_restarts=self.max_restarts,
                                         max_task_retries=0).remote(self.argv)
        replica_id = f"ray-{pool}-{next(self._ids)}" if pool else f"ray-{next(self._ids)}"
        return StartedReplica(replica_id, "", pool, role, actor)

    def url_of(self, replica: StartedReplica) -> str:
        try:
            return self.ray.get(_actor(replica).url.remote(), timeout=URL_TIMEOUT_S)
        except self.ray.exceptions.ActorDiedError as error:  # out of restarts, or killed: gone for good
            if replica.replica_id not in self._dead:
                self._dead.add(replica.replica_id)
                logger.error("fleetserve: replica %s is gone and will not restart: %s", replica.replica_id,
                             str(error).splitlines()[0])
            return ""
        except Exception:  # still placing, or restarting: no address to route to now
            return ""

    def exited(self, replica: StartedReplica) -> bool:
        return replica.replica_id in self._dead

    def stop(self, replica: StartedReplica, timeout_s: float) -> None:
        try:
            self.ray.get(_actor(replica).stop.remote(timeout_s), timeout=timeout_s + 5)
        except Exception as error:
            logger.warning("fleetserve: replica %s did not stop cleanly (%s)", replica.replica_id, error)
        self.ray.kill(replica.handle, no_restart=True)
        self._dead.add(replica.replica_id)


def _actor(replica: StartedReplica) -> Any:
    """The replica's Ray actor handle (typed loosely: Ray builds its methods at run time)."""
    return replica.handle
