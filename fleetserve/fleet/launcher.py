"""A fleet behind one router: replicas from a provider (local processes, fleetserve.fleet.local_replicas, or
Ray actors, fleetserve.fleet.ray_replicas), kept by the scaling loop in the router's own process
(fleetserve.fleet.scaling_loop), optionally grown and shrunk by an autoscaler.

fleetserve.commands.serve_fleet builds the provider and the replicas' specs from `serve --replicas N`. On
SIGTERM or Ctrl-C the router stops first (letting open streams finish for a few seconds), then each replica
drains and exits; a replica still running after the shutdown timeout is killed.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

from fleetserve.fleet.autoscaler import Autoscaler
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.replica_provider import ReplicaProvider
from fleetserve.fleet.request_info import PromptTokenizer
from fleetserve.fleet.router import build_server, configure_logging
from fleetserve.fleet.router_state import RouterState
from fleetserve.fleet.scaling_loop import ReplicaSpec, ScalingLoop
from fleetserve.fleet.scaling_metrics import FleetLedger

logger = logging.getLogger("fleetserve.fleet")

ROUTER_GRACE_S = 5.0  # beyond the replicas' shutdown timeout, before a replica is killed


class ReplicaPlan(NamedTuple):
    port: int
    threads: int
    kv_cache_bytes: int


def plan_replicas(count: int, base_port: int, total_threads: int, kv_cache_bytes_each: int) -> list[ReplicaPlan]:
    """Replica i on base_port + i, with an even share of the threads (at least one) and the given KV budget."""
    threads = max(1, total_threads // count)
    return [ReplicaPlan(base_port + i, threads, kv_cache_bytes_each) for i in range(count)]


def run_fleet(provider: ReplicaProvider, initial: Sequence[ReplicaSpec], config: RouterConfig,
              tokenizer: PromptTokenizer | None, shutdown_timeout_s: float, autoscaler: Autoscaler | None = None,
              replica_price_per_hour: float = 0.0, scale_spec: ReplicaSpec = ReplicaSpec()) -> int:
    """Start the initial replicas, serve the router until it is stopped, then stop the replicas; the exit
    code (1 when a replica exited on its own)."""
    configure_logging(config.log_level)
    router = RouterState(config, tokenizer)
    server = None

    def stop_router() -> None:
        if server is not None:
            server.should_exit = True

    keeper = ScalingLoop(router, provider, initial, autoscaler, shutdown_timeout_s + ROUTER_GRACE_S,
                         FleetLedger(replica_price_per_hour), scale_spec, on_fleet_gone=stop_router)
    server = build_server(config, tokenizer, router, keeper)
    try:
        server.run()
    finally:
        keeper.stop_all()
    return 1 if keeper.unexpected_exits else 0
