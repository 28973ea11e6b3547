"""`fleetserve serve --replicas N`: N engine replicas, each its own process on its own loopback port with
its share of the KV-cache budget and of the CPU threads, behind a router on the public --host/--port
(fleetserve.fleet.launcher runs them).

Replica i listens on 127.0.0.1:(--replica-base-port or --port + 1) + i. Every engine and server flag
given to `serve` is passed on to each replica, except those the launcher splits (--kv-cache-memory,
--threads) or owns (--host, --port, the routing flags).
"""
from __future__ import annotations

import argparse
import os
import sys

from fleetserve.commands.engine_arguments import add_engine_arguments
from fleetserve.commands.route import add_router_arguments, parse_roles, router_config
from fleetserve.commands.serve_arguments import add_serve_arguments
from fleetserve.engine.config import parse_size
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.launcher import ReplicaPlan, plan_replicas

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
    add_router_arguments(group)


def fleet_plan(args: argparse.Namespace) -> list[ReplicaPlan]:
    """Each replica's port, threads and KV budget, from the `serve` flags."""
    count = args.replicas
    if count < 1:
        raise ValueError(f"--replicas must be >= 1, got {count}")
    if args.kv_cache_memory_per_replica is not None:
        kv_bytes = parse_size(args.kv_cache_memory_per_replica)
    else:
        kv_bytes = parse_size(args.kv_cache_memory) // count
    base = args.replica_base_port if args.replica_base_port is not None else args.port + 1
    plan = plan_replicas(count, base, args.threads or os.cpu_count() or 1, kv_bytes)
    ports = [replica.port for replica in plan]
    if args.port in ports:
        raise ValueError(f"the replica ports {ports} include the router's --port {args.port}")
    parse_roles(args.roles, count, _counted_by(args))  # refused before any model is loaded
    return plan


def _counted_by(args: argparse.Namespace) -> str:
    return f"--replicas {args.replicas}"


def fleet_router_config(args: argparse.Namespace, plan: list[ReplicaPlan], tokenizer: str) -> RouterConfig:
    """The router's config: the replicas of the plan as its backends, in order, with their --roles."""
    return router_config(args, [f"http://127.0.0.1:{replica.port}" for replica in plan], tokenizer, _counted_by(args))


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
    plan = fleet_plan(args)
    folder = resolve_model(args.model, args.cache_dir)  # convert once here, not N times in parallel
    argvs = [replica_argv(args, replica.port, replica.threads, replica.kv_cache_bytes) for replica in plan]
    config = fleet_router_config(args, plan, str(folder))
    return run_fleet(plan, argvs, config, Tokenizer(folder), args.shutdown_timeout)
