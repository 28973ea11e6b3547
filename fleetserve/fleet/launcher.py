"""`fleetserve serve --replicas N`: N engine replicas, each its own process on its own loopback port with
its share of the KV-cache budget and of the CPU threads, behind a router on the public --host/--port.

Replica i listens on 127.0.0.1:(--replica-base-port or --port + 1) + i. Every engine and server flag
given to `serve` is passed on to each replica, except those the launcher splits (--kv-cache-memory,
--threads) or owns (--host, --port, the routing flags). On SIGTERM or Ctrl-C the router stops first
(letting open streams finish for a few seconds), then each replica drains (--shutdown-timeout) and
exits; a replica still running after that is killed. Replicas also get SIGTERM if the launcher dies.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

logger = logging.getLogger("fleetserve.fleet")

# Flags the launcher decides per replica, or that belong to the router: never passed on as given.
_NOT_PASSED_ON = {"help", "host", "port", "threads", "kv_cache_memory", "replicas", "replica_base_port",
                  "kv_cache_memory_per_replica", "policy", "ttft_slo_ms", "prefill_tokens_per_s",
                  "max_imbalance_tokens", "prefix_ttl", "health_interval", "max_attempts"}
_PR_SET_PDEATHSIG = 1


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    from fleetserve.commands.route import add_policy_arguments
    group = parser.add_argument_group("fleet (with --replicas N > 1)")
    group.add_argument("--replicas", type=int, default=1,
                       help="run N engine replicas behind a router on --port; --kv-cache-memory and --threads "
                            "are split between them")
    group.add_argument("--replica-base-port", type=int, default=None,
                       help="replica i listens on this port + i (default: --port + 1)")
    group.add_argument("--kv-cache-memory-per-replica", default=None,
                       help="give each replica this KV budget instead of an even split of --kv-cache-memory")
    add_policy_arguments(group)


def replica_argv(args: argparse.Namespace, port: int, threads: int, kv_cache_bytes: int) -> list[str]:
    """The command line of one replica: `serve` with every flag given, but the split and owned ones."""
    from fleetserve.cli import add_engine_arguments
    from fleetserve.commands.serve import add_serve_arguments
    parser = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(parser)
    add_serve_arguments(parser)
    argv = [sys.executable, "-m", "fleetserve.commands.serve", "--host", "127.0.0.1", "--port", str(port),
            "--threads", str(threads), "--kv-cache-memory", str(kv_cache_bytes)]
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


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the launcher dies, so no replica is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    os.setsid()  # Ctrl-C reaches the launcher only, which stops the router before the replicas


class ReplicaProcesses:
    def __init__(self, argvs: list[list[str]]) -> None:
        self.argvs = argvs
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        for argv in self.argvs:
            self.processes.append(subprocess.Popen(argv, preexec_fn=_die_with_parent))

    def all_exited(self) -> bool:
        return all(p.poll() is not None for p in self.processes)

    def stop(self, timeout_s: float) -> list[int]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.warning("fleetserve: replica pid %d did not exit in %.0fs; killing it", process.pid, timeout_s)
                process.kill()
                process.wait()
        return [p.returncode for p in self.processes]


def plan_replicas(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """(port, threads, KV bytes) of each replica."""
    from fleetserve.engine.config import parse_size
    count = args.replicas
    if count < 1:
        raise ValueError(f"--replicas must be >= 1, got {count}")
    total_threads = args.threads or os.cpu_count() or 1
    threads = max(1, total_threads // count)
    if args.kv_cache_memory_per_replica is not None:
        kv_bytes = parse_size(args.kv_cache_memory_per_replica)
    else:
        kv_bytes = parse_size(args.kv_cache_memory) // count
    base = args.replica_base_port if args.replica_base_port is not None else args.port + 1
    ports = [base + i for i in range(count)]
    if args.port in ports:
        raise ValueError(f"the replica ports {ports} include the router's --port {args.port}")
    return [(port, threads, kv_bytes) for port in ports]


def run_fleet(args: argparse.Namespace) -> int:
    from fleetserve.commands.route import router_config
    from fleetserve.fleet.router import build_server, configure_logging
    from fleetserve.model.loader import resolve_model
    from fleetserve.model.tokenizer import Tokenizer

    configure_logging(args.log_level)
    plan = plan_replicas(args)
    folder = resolve_model(args.model, args.cache_dir)  # convert once here, not N times in parallel
    replicas = ReplicaProcesses([replica_argv(args, port, threads, kv) for port, threads, kv in plan])
    backends = [f"http://127.0.0.1:{port}" for port, _, _ in plan]
    config = router_config(args, backends, str(folder))
    server = build_server(config, Tokenizer(folder))
    logger.info("fleetserve: starting %d replicas (ports %s, %d thread(s) and %d MiB of KV cache each) behind a "
                "%s router at %s/v1", len(plan), [p for p, _, _ in plan], plan[0][1], plan[0][2] // 2**20,
                config.policy, config.url)
    replicas.start()

    def stop_router_when_replicas_are_gone() -> None:
        while not server.should_exit:
            if replicas.all_exited():
                logger.error("fleetserve: every replica has exited; stopping the router")
                server.should_exit = True
            time.sleep(0.5)

    threading.Thread(target=stop_router_when_replicas_are_gone, daemon=True, name="replica-watch").start()
    try:
        server.run()
    finally:
        codes = replicas.stop(args.shutdown_timeout + 5.0)
    failed = [code for code in codes if code not in (0, -signal.SIGTERM)]
    if failed:
        logger.error("fleetserve: replicas exited with codes %s", codes)
    return 1 if failed else 0
