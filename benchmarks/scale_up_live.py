"""Live scale-up on this machine: the time from the autoscaler's scale-up decision to the new replica serving.

    .venv/bin/python benchmarks/scale_up_live.py [--repeats 5] [--out benchmarks/results/scale_up_live]

One fleet, `serve --replicas 1 --autoscale target --max-replicas 2` of the default model (1 thread per
replica). Each round keeps --concurrency streamed requests in flight until the autoscaler has started a
second replica and it serves, then stops the load and waits until the fleet has drained back to one
replica. Per round, from the router's scaling timeline (GET /admin/scaling) and a 20 ms poll of the new
replica's own /health:
  started: decision -> the provider has started the process;
  ready:   decision -> the replica's own GET /health first answers 200 (model loaded);
  serving: decision -> the router's first passing health check (what the router records and logs; it
           follows `ready` by up to one --health-interval).
The exact command and every round are stored in OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what} within {timeout_s}s")


class Fleet:
    def __init__(self, log: Path, health_interval: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [sys.executable, "-m", "fleetserve.cli", "serve", "--port", str(self.port),
                     "--replica-base-port", str(free_port()), "--replicas", "1", "--autoscale", "target",
                     "--max-replicas", "2", "--target-ongoing-requests", "2", "--autoscale-interval", "0.5",
                     "--upscale-delay", "0", "--downscale-delay", "1", "--health-interval", str(health_interval),
                     "--threads", "2", "--kv-cache-memory", "256MiB", "--no-access-log", "--shutdown-timeout", "2"]
        self.log = open(log, "wb")
        self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def scaling(self) -> dict:
        return httpx.get(f"{self.url}/admin/scaling", timeout=5).json()

    def serving(self) -> int:
        try:
            replicas = httpx.get(f"{self.url}/admin/replicas", timeout=5).json()["replicas"]
        except httpx.HTTPError:
            return 0
        return sum(r["healthy"] and not r["draining"] for r in replicas)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def load(url: str, stop: threading.Event, worker: int) -> int:
    done = 0
    body = {"prompt": f"Worker {worker} tells a long story:", "max_tokens": 32, "ignore_eos": True, "stream": True}
    while not stop.is_set():
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
            response.raise_for_status()
            for _ in response.iter_bytes():
                pass
        done += 1
    return done


def ready_at(replica: str, timeout_s: float = 120) -> float:
    """Wall-clock time of the replica's own first 200 on GET /health."""
    def ready() -> float | None:
        try:
            return time.time() if httpx.get(f"http://{replica}/health", timeout=1).status_code == 200 else None
        except httpx.HTTPError:
            return None
    return wait_for(ready, timeout_s, f"{replica} ready", 0.02)


def one_round(fleet: Fleet, concurrency: int, seen: int) -> dict:
    stop = threading.Event()
    with ThreadPoolExecutor(concurrency) as pool:
        workers = [pool.submit(load, fleet.url, stop, i) for i in range(concurrency)]
        started = wait_for(lambda: [e for e in fleet.scaling()["events"] if e["event"] == "started"
                                    and e["cause"] == "scale_up"][seen:], 120, "a scale-up start")[0]
        replica_ready = ready_at(started["replica"])
        serving = wait_for(lambda: [e for e in fleet.scaling()["events"] if e["event"] == "serving"
                                    and e["replica"] == started["replica"]], 120, "the new replica serving")[0]
        stop.set()
        requests = sum(worker.result() for worker in workers)
    events = fleet.scaling()["events"]
    decision = [e for e in events if e["event"] == "scale_up" and e["time"] <= started["time"]][-1]
    wait_for(lambda: [e for e in fleet.scaling()["events"] if e["event"] == "stopped"][seen:], 120,
             "the fleet back to one replica")
    wait_for(lambda: fleet.serving() == 1, 30, "one replica serving")
    return {"replica": started["replica"], "started_s": round(started["time"] - decision["time"], 3),
            "ready_s": round(replica_ready - decision["time"], 3), "serving_s": serving["seconds"],
            "requests": requests}


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=3, help="streams kept in flight during a round")
    parser.add_argument("--health-interval", type=float, default=0.5, help="the router's (its default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale_up_live")
    args = parser.parse_args()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(args.out / "logs" / "fleet.log", args.health_interval)
    rounds = []
    try:
        wait_for(lambda: fleet.serving() == 1, 240, "the first replica serving", 0.2)
        for i in range(args.repeats):
            rounds.append(one_round(fleet, args.concurrency, i))
            print(f"round {i + 1}: {rounds[-1]}", flush=True)
    finally:
        fleet.stop()
    result = {"command": " ".join(fleet.argv[1:]), "concurrency": args.concurrency, "rounds": rounds,
              **{key: summary([r[f"{key}_s"] for r in rounds]) for key in ("started", "ready", "serving")}}
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"decision -> serving: median {result['serving']['median']} s "
          f"(range {result['serving']['min']}-{result['serving']['max']}); replica ready: median "
          f"{result['ready']['median']} s; process started: median {result['started']['median']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
