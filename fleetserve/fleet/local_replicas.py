"""Replicas as processes on this machine: the default provider of replicas (fleetserve.fleet.replica_provider).

Each replica is `python -m fleetserve.commands.serve` on its own loopback port. Ports count up from a base
port (the first replica gets the base), skipping ports something else holds; a port is never given twice in
one run, so a replica's id (host:port) names one process only, in the logs and in the metrics. A replica
gets SIGTERM if the launcher dies, and runs in its own session, so Ctrl-C reaches the launcher only, which
stops the router before the replicas.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from fleetserve.fleet.replica_provider import StartedReplica

logger = logging.getLogger("fleetserve.fleet")

_PR_SET_PDEATHSIG = 1
HOST = "127.0.0.1"
MAX_PORT = 65535


def term_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the thread that started it ends."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    """SIGTERM when the launcher dies, so no replica is orphaned; its own session, so Ctrl-C reaches the
    launcher only."""
    term_with_parent()
    os.setsid()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


class LocalReplicas:
    """Starts replicas as child processes; `argv_for(port)` is one replica's command line."""

    def __init__(self, argv_for: Callable[[int], list[str]], base_port: int, reserved: Iterable[int] = ()) -> None:
        self.argv_for = argv_for
        self._next_port = base_port
        self._reserved = set(reserved)  # e.g. the router's own port
        self._lock = threading.Lock()  # start() may be called from several threads
        # The parent-death signal fires when the thread that started a child ends, not the process: every
        # replica is started from this one thread, which lives as long as the launcher.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="replica-spawner")

    def _take_port(self) -> int:
        with self._lock:
            while self._next_port <= MAX_PORT:
                port = self._next_port
                self._next_port += 1
                if port not in self._reserved and port_is_free(port):
                    return port
        raise RuntimeError(f"no free loopback port left from the replica base port up to {MAX_PORT}")

    def start(self, pool: str | None = None, role: str = "mixed") -> StartedReplica:
        port = self._take_port()
        argv = self.argv_for(port)
        process = self._spawner.submit(subprocess.Popen, argv, preexec_fn=die_with_parent).result()
        logger.info("fleetserve: started replica %s:%d (pid %d)", HOST, port, process.pid)
        return StartedReplica(f"{HOST}:{port}", f"http://{HOST}:{port}", pool, role, handle=process)

    def url_of(self, replica: StartedReplica) -> str:
        return replica.url

    def exited(self, replica: StartedReplica) -> bool:
        return self._process(replica).poll() is not None

    def stop(self, replica: StartedReplica, timeout_s: float) -> None:
        process = self._process(replica)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the replica drains its requests, then exits
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("fleetserve: replica %s (pid %d) did not exit in %.0fs; killing it", replica.replica_id,
                           process.pid, timeout_s)
            process.kill()
            process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            logger.error("fleetserve: replica %s exited with code %d", replica.replica_id, process.returncode)

    @staticmethod
    def _process(replica: StartedReplica) -> subprocess.Popen:
        assert isinstance(replica.handle, subprocess.Popen), "not a replica this provider started"
        return replica.handle
