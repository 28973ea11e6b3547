"""N engine replicas, each its own process on its own loopback port, behind one router.

The caller gives each replica's command line (fleetserve.commands.serve_fleet builds them from `serve
--replicas N`). On SIGTERM or Ctrl-C the router stops first (letting open streams finish for a few
seconds), then each replica drains and exits; a replica still running after the shutdown timeout is
killed. Replicas also get SIGTERM if the launcher dies.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from typing import NamedTuple

from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.request_info import PromptTokenizer
from fleetserve.fleet.router import build_server, configure_logging

logger = logging.getLogger("fleetserve.fleet")

_PR_SET_PDEATHSIG = 1
ROUTER_GRACE_S = 5.0  # beyond the replicas' shutdown timeout, before a replica is killed


class ReplicaPlan(NamedTuple):
    port: int
    threads: int
    kv_cache_bytes: int


def plan_replicas(count: int, base_port: int, total_threads: int, kv_cache_bytes_each: int) -> list[ReplicaPlan]:
    """Replica i on base_port + i, with an even share of the threads (at least one) and the given KV budget."""
    threads = max(1, total_threads // count)
    return [ReplicaPlan(base_port + i, threads, kv_cache_bytes_each) for i in range(count)]


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


def run_fleet(plan: list[ReplicaPlan], replica_argvs: list[list[str]], config: RouterConfig,
              tokenizer: PromptTokenizer | None, shutdown_timeout_s: float) -> int:
    """Start the replicas, serve the router until it is stopped, then stop the replicas; the exit code."""
    configure_logging(config.log_level)
    replicas = ReplicaProcesses(replica_argvs)
    server = build_server(config, tokenizer)
    logger.info("fleetserve: starting %d replicas (ports %s, %d thread(s) and %d MiB of KV cache each) behind a "
                "%s router at %s/v1", len(plan), [p.port for p in plan], plan[0].threads,
                plan[0].kv_cache_bytes // 2**20, config.policy, config.url)
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
        codes = replicas.stop(shutdown_timeout_s + ROUTER_GRACE_S)
    failed = [code for code in codes if code not in (0, -signal.SIGTERM)]
    if failed:
        logger.error("fleetserve: replicas exited with codes %s", codes)
    return 1 if failed else 0
