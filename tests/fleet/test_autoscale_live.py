"""`fleetserve serve --autoscale` live, with real replicas of the default model and the real `openai`
client: a ramp of load scales the fleet 1 -> 2 -> 1 replicas with every request completed, and a drained
replica gets no new requests while the ones it holds run to their end."""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from fleet_helpers import Process, free_port, metric_sum, parse_metrics, wait_until

pytestmark = pytest.mark.slow

FLEET_ARGS = ["--kv-cache-memory", "96MiB", "--threads", "2", "--dtype", "float32", "--max-num-seqs", "4",
              "--no-access-log", "--shutdown-timeout", "2", "--health-interval", "0.2"]


class Fleet(Process):
    """`fleetserve serve --replicas N ...` in its own process."""

    def __init__(self, log_path: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "fleetserve.cli", "serve", "--port", str(self.port),
                          "--replica-base-port", str(free_port()), *FLEET_ARGS, *extra], log_path)

    def get(self, path: str) -> httpx.Response:
        assert self.process.poll() is None, self.log_text()
        return httpx.get(self.url + path, timeout=5)

    def serving(self) -> list[dict]:
        try:
            replicas = self.get("/admin/replicas").json()["replicas"]
        except httpx.HTTPError:
            return []
        return [r for r in replicas if r["healthy"] and not r["draining"]]

    def events(self, kind: str) -> list[dict]:
        return [e for e in self.get("/admin/scaling").json()["events"] if e["event"] == kind]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=120)


def watch_serving_counts(fleet: Fleet, stop: threading.Event, seen: list[int]) -> None:
    """The number of serving replicas each time it changes (the replica timeline)."""
    while not stop.is_set():
        count = len(fleet.serving())
        if count and (not seen or seen[-1] != count):
            seen.append(count)
        stop.wait(0.05)


def test_a_ramp_of_load_scales_one_to_two_to_one_replica_and_every_request_completes(tmp_path):
    fleet = Fleet(tmp_path / "fleet.log", [
        "--replicas", "1", "--autoscale", "target", "--max-replicas", "2", "--target-ongoing-requests", "2",
        "--autoscale-interval", "0.25", "--upscale-delay", "0", "--downscale-delay", "1.5", "--policy", "least_loaded"])
    stop_load, stop_watch = threading.Event(), threading.Event()
    seen: list[int] = []
    try:
        wait_until(lambda: len(fleet.serving()) == 1, 240, "the first replica serving", 0.2)
        model = fleet.get("/v1/models").json()["data"][0]["id"]
        client = fleet.client()

        def keep_sending(worker: int) -> list[str]:
            finished = []
            while not stop_load.is_set():
                stream = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"Count to ten, worker {worker}."}],
                    max_tokens=12, temperature=0, stream=True)
                reasons = [choice.finish_reason for chunk in stream for choice in chunk.choices if choice.finish_reason]
                finished += reasons
            return finished

        watcher = threading.Thread(target=watch_serving_counts, args=(fleet, stop_watch, seen), daemon=True)
        watcher.start()
        with ThreadPoolExecutor(5) as pool:
            workers = [pool.submit(keep_sending, i) for i in range(5)]
            # Load until the new replica has taken requests of its own.
            wait_until(lambda: len([k for k, v in parse_metrics(fleet.get("/metrics").text).items()
                                    if k.startswith("fleetserve:router_decisions_total") and v > 0]) >= 2,
                       240, "requests routed to a second replica", 0.2)
            stop_load.set()
            finished = [reason for worker in workers for reason in worker.result()]
        assert finished and set(finished) <= {"length", "stop"}  # every stream ended normally
        wait_until(lambda: fleet.events("stopped"), 60, "the surplus replica drained and stopped", 0.2)
        wait_until(lambda: seen and seen[-1] == 1, 10, "one replica serving again", 0.1)
        stop_watch.set()
        watcher.join()
        assert seen[0] == 1 and 2 in seen and seen[-1] == 1, seen
        kinds = [e["event"] for e in fleet.get("/admin/scaling").json()["events"]]
        assert kinds.index("scale_up") < kinds.index("scale_down") < kinds.index("removed") < kinds.index("stopped")
        scaled_up = [e for e in fleet.events("serving") if e["cause"] == "scale_up"]
        assert len(scaled_up) == 1 and scaled_up[0]["seconds"] > 0
        samples = parse_metrics(fleet.get("/metrics").text)
        assert samples['fleetserve:fleet_scale_decisions_total{direction="up"}'] == 1
        assert samples['fleetserve:fleet_scale_decisions_total{direction="down"}'] == 1
        assert samples['fleetserve:fleet_replicas{state="serving"}'] == 1
        assert samples["fleetserve:fleet_pending_scale_actions"] == 0
        assert metric_sum(samples, "fleetserve:fleet_replica_hours_total") > 0
        assert metric_sum(samples, "fleetserve:router_stream_failures_total") == 0
        stopped = fleet.events("stopped")[0]["replica"]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{stopped}/health", timeout=2)
    finally:
        stop_load.set()
        stop_watch.set()
        code = fleet.stop(60)
    assert code == 0, fleet.log_text()


def test_a_drained_replica_gets_no_new_requests_and_finishes_its_own(tmp_path):
    fleet = Fleet(tmp_path / "fleet.log", ["--replicas", "2"])
    try:
        wait_until(lambda: len(fleet.serving()) == 2, 240, "two replicas serving", 0.2)
        model = fleet.get("/v1/models").json()["data"][0]["id"]
        client = fleet.client()
        raw = client.completions.with_raw_response.create(model=model, prompt="Once upon a time", max_tokens=48,
                                                         temperature=0, stream=True, extra_body={"ignore_eos": True},
                                                         stream_options={"include_usage": True})
        draining = raw.headers["x-fleetserve-replica"]
        stream = iter(raw.parse())
        chunks = [next(stream)]  # the request is under way on the replica to drain
        assert httpx.post(f"{fleet.url}/admin/replicas/{draining}/drain", timeout=5).status_code == 200
        others = {client.completions.with_raw_response.create(model=model, prompt=f"Question {i}:", max_tokens=4,
                                                              temperature=0).headers["x-fleetserve-replica"]
                  for i in range(4)}
        assert draining not in others and len(others) == 1
        chunks += list(stream)
        assert [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason] == ["length"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 48
        wait_until(lambda: [e for e in fleet.events("stopped") if e["replica"] == draining], 60,
                   "the drained replica stopped", 0.2)
        assert [r["id"] for r in fleet.serving()] == list(others)
        assert draining not in {r["id"] for r in fleet.get("/admin/replicas").json()["replicas"]}
    finally:
        code = fleet.stop(60)
    assert code == 0, fleet.log_text()
