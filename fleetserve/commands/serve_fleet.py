"""`fleetserve serve --replicas N`: N engine replicas, each its own process on its own loopback port with
its share of the KV-cache budget and of the CPU threads, behind a router on the public --host/--port
(fleetserve.fleet.launcher runs them).

Replica i listens on 127.0.0.1:(--replica-base-port or --port + 1) + i. Every engine and server flag
given to `serve` is passed on to each replica, except those the launcher splits (--kv-cache-memory,
--threads) or owns (--host, --port, the routing flags). With --autoscale the fleet grows and shrinks between
--min-replicas and --max-replicas (fleetserve.fleet.scaling_loop), and the KV budget and threads are split
between --max-replicas replicas, so the largest fleet fits.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter

from fleetserve.commands.autoscale_arguments import add_autoscale_arguments, autoscaler_config, make_autoscaler
from fleetserve.commands.engine_arguments import add_engine_arguments
from fleetserve.commands.ray_arguments import add_ray_arguments, ray_placement, ray_replica_specs
from fleetserve.commands.route import add_router_arguments, parse_roles, router_config
from fleetserve.commands.serve_arguments import add_serve_arguments
from fleetserve.engine.config import parse_size
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.launcher import ReplicaPlan, plan_replicas
from fleetserve.fleet.replica_provider import ReplicaProvider
from fleetserve.fleet.scaling_loop import ReplicaSpec

logger = logging.getLogger("fleetserve.fleet")

# Flags the launcher decides per replica, or that belong to the router: never passed on as given.
_NOT_PASSED_ON = {"help", "host", "port", "threads", "kv_cache_memory", "replicas", "replica_base_port",
                  "kv_cache_memory_per_replica", "policy", "ttft_slo_ms", "prefill_tokens_per_s",
                  "max_imbalance_tokens", "max_imbalance_ratio", "hot_key_factor", "session_load_factor",
                  "prefix_ttl", "health_interval", "max_attempts", "plan", "online_busy_in_flight",
                  "offline_max_in_flight", "batch_db", "batch_concurrency", "no_batch_api", "roles",
                  "disaggregation", "min_remote_prefill_tokens", "max_prefill_queue", "prefill_timeout"}


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fleet (with --replicas N > 1)")
    group.add_argument("--replicas", type=int, default=1,
                       help="run N engine replicas behind a router on --port; --kv-cache-memory and --threads "
                            "are split between them")
    group.add_argument("--replica-base-port", type=int, default=None,
                       help="replica i listens on this port + i (default: --port + 1)")
    group.add_argument("--kv-cache-memory-per-replica", default=None,
                       help="give each replica this KV budget instead of an even split of --kv-cache-memory")
    group.add_argument("--replica-price", type=float, default=0.0, metavar="PER_HOUR",
                       help="the price of one replica-hour, for the cost on the router's /metrics (a replica whose "
                            "pool names catalog hardware costs that hardware's price)")
    add_router_arguments(group)
    add_autoscale_arguments(parser)
    add_ray_arguments(parser)


def wants_fleet(args: argparse.Namespace) -> bool:
    """`serve` runs a fleet behind a router rather than one server (autoscaling flags without --autoscale are
    refused either way)."""
    return args.replicas > 1 or autoscaler_config(args) is not None or args.ray is not None


def fleet_plan(args: argparse.Namespace) -> list[ReplicaPlan]:
    """Each replica's port, threads and KV budget, from the `serve` flags (and the autoscaling flags, all
    checked here, before any model is loaded)."""
    count = args.replicas
    if count < 1:
        raise ValueError(f"--replicas must be >= 1, got {count}")
    if args.replica_price < 0:
        raise ValueError(f"--replica-price must not be negative, got {args.replica_price}")
    autoscaling = autoscaler_config(args)
    split = count
    if autoscaling is not None:
        if not autoscaling.min_replicas <= count <= autoscaling.max_replicas:
            raise ValueError(f"--replicas {count} (the starting count) must lie between --min-replicas "
                             f"{autoscaling.min_replicas} and --max-replicas {autoscaling.max_replicas}")
        if args.roles is not None:
            raise ValueError("--autoscale starts and drains mixed replicas only; drop --roles")
        split = autoscaling.max_replicas
    if args.kv_cache_memory_per_replica is not None:
        kv_bytes = parse_size(args.kv_cache_memory_per_replica)
    else:
        kv_bytes = parse_size(args.kv_cache_memory) // split
    base = args.replica_base_port if args.replica_base_port is not None else args.port + 1
    plan = plan_replicas(split, base, args.threads or os.cpu_count() or 1, kv_bytes)[:count]
    ports = [replica.port for replica in plan]
    if args.port in ports:
        raise ValueError(f"the replica ports {ports} include the router's --port {args.port}")
    parse_roles(args.roles, count, _counted_by(args))  # refused before any model is loaded
    return plan


def _counted_by(args: argparse.Namespace) -> str:
    return f"--replicas {args.replicas}"


def fleet_router_config(args: argparse.Namespace, tokenizer: str) -> RouterConfig:
    """The router's config; it starts with no backends: the scaling loop registers each replica it starts."""
    return router_config(argparse.Namespace(**{**vars(args), "roles": None}), [], tokenizer)


def initial_specs(args: argparse.Namespace, plan: list[ReplicaPlan]) -> list[ReplicaSpec]:
    """The replicas to start with, one per planned replica, with their --roles."""
    roles = parse_roles(args.roles, len(plan), _counted_by(args)) or ["mixed"] * len(plan)
    return [ReplicaSpec(None, role) for role in roles]


def replica_provider(args: argparse.Namespace, plan: list[ReplicaPlan], specs: list[ReplicaSpec]) -> ReplicaProvider:
    """Where the replicas run: processes on this machine, or with --ray actors on a Ray cluster (joined, and
    checked to hold `specs`, here: before any model is loaded)."""
    if args.ray is not None:
        from fleetserve.fleet.ray_replicas import RayReplicas, check_placement, connect
        placement = ray_placement(args)
        connect(args.ray or None)
        check_placement(Counter(spec.pool for spec in specs), placement)
        threads = max(1, int(placement.cpus))  # the engine uses the CPUs its actor holds
        return RayReplicas(replica_argv(args, 0, threads, plan[0].kv_cache_bytes), placement)
    from fleetserve.fleet.local_replicas import LocalReplicas
    threads, kv_bytes = plan[0].threads, plan[0].kv_cache_bytes
    return LocalReplicas(lambda port: replica_argv(args, port, threads, kv_bytes), plan[0].port, reserved={args.port})


def replica_argv(args: argparse.Namespace, port: int, threads: int, kv_cache_bytes: int) -> list[str]:
    """The command line of one replica: `serve` with every flag given, but the split and owned ones."""
    parser = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(parser)
    add_serve_arguments(parser)
    # The router serves the Batch API of a fleet, so batch lines reach the replicas through it, as offline work.
    argv = [sys.executable, "-m", "fleetserve.commands.serve", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--kv-cache-memory", str(kv_cache_bytes), "--no-batch-api"]
    for action in parser._actions:
        if action.dest in _NOT_PASSED_ON or not action.option_strings or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    from fleetserve.fleet.launcher import run_fleet
    from fleetserve.fleet.router import configure_logging
    from fleetserve.model.loader import resolve_model
    from fleetserve.model.tokenizer import Tokenizer

    configure_logging(args.log_level)
    ray_specs = ray_replica_specs(args)
    if ray_specs is not None:
        args = argparse.Namespace(**{**vars(args), "replicas": len(ray_specs)})
    plan = fleet_plan(args)
    specs = ray_specs or initial_specs(args, plan)
    provider = replica_provider(args, plan, specs)
    autoscaler = make_autoscaler(args)
    autoscaling = autoscaler.config if autoscaler is not None else None
    folder = resolve_model(args.model, args.cache_dir)  # convert once here, not N times in parallel
    config = fleet_router_config(args, str(folder))
    logger.info("fleetserve: starting %d replicas (from port %d, %d thread(s) and %d MiB of KV cache each) behind a "
                "%s router at %s/v1%s", len(plan), plan[0].port, plan[0].threads, plan[0].kv_cache_bytes // 2**20,
                config.policy, config.url, "" if autoscaling is None else
                f", autoscaling ({autoscaling.policy}) between {autoscaling.min_replicas} and "
                f"{autoscaling.max_replicas}")
    pools = {spec.pool for spec in specs}
    scale_spec = ReplicaSpec(pools.pop() if len(pools) == 1 else None)  # a scale-up joins a lone pool
    return run_fleet(provider, specs, config, Tokenizer(folder), args.shutdown_timeout, autoscaler,
                     args.replica_price, scale_spec)
