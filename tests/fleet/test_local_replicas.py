"""The local provider of replicas with stand-in processes (no model): ports count up from the base, skipping
ports in use and reserved ones and never given twice; stop sends SIGTERM, then kills after the timeout."""
from __future__ import annotations

import socket
import sys

from fleetserve.fleet.local_replicas import LocalReplicas

from fleet_helpers import free_port, wait_until

SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
STUBBORN = ("import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")


def test_ports_count_up_skipping_busy_and_reserved_ones_and_stop_ends_the_process():
    base = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))
        provider = LocalReplicas(lambda port: [sys.executable, "-c", SLEEPER], base, reserved={base + 2})
        first, second = provider.start(), provider.start()
    assert (first.url, second.url) == (f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 3}")
    assert first.replica_id == f"127.0.0.1:{base}" and provider.url_of(first) == first.url
    assert not provider.exited(first)
    provider.stop(first, timeout_s=10)
    assert provider.exited(first) and not provider.exited(second)
    provider.stop(second, timeout_s=10)
    third = provider.start()  # a stopped replica's port is not given again
    assert third.url == f"http://127.0.0.1:{base + 4}"
    provider.stop(third, timeout_s=10)


def test_a_replica_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    ready = tmp_path / "ignoring-sigterm"
    provider = LocalReplicas(lambda port: [sys.executable, "-c", STUBBORN, str(ready)], free_port())
    replica = provider.start()
    wait_until(ready.exists, 30, "the stand-in replica ignoring SIGTERM")
    provider.stop(replica, timeout_s=0.5)
    assert provider.exited(replica) and replica.handle.returncode == -9
