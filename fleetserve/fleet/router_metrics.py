"""The router's Prometheus metrics: per-replica load and health (read at scrape time), routing decisions
per policy, estimated prefix hits, retries, ejections, mid-stream failures and migrations, remote prefills (and their
fallbacks and hand-off times) and requests by status."""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetserve.fleet.prefix_index import PrefixIndex
from fleetserve.fleet.replicas import Replica

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReplicaStateCollector(Collector):
    def __init__(self, replicas: Callable[[], Iterable[Replica]], index: PrefixIndex,
                 offline_held: Callable[[], int]) -> None:
        self.replicas = replicas
        self.index = index
        self.offline_held = offline_held

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("fleetserve:router_offline_held", "Offline requests waiting at the router for a "
                                "replica with room", value=float(self.offline_held()))
        gauges = {
            "healthy": ("1 when the replica takes requests, 0 while ejected", lambda r: float(r.healthy)),
            "in_flight": ("Online requests the router has sent to the replica and not finished",
                          lambda r: r.in_flight),
            "offline_in_flight": ("Offline requests the router has sent to the replica and not finished",
                                  lambda r: r.offline_in_flight),
            "waiting_prefill_tokens": ("Prompt tokens sent to the replica whose first byte has not come back",
                                       lambda r: max(r.waiting_prefill_tokens, 0)),
            "decoding_tokens": ("Output tokens still to come from the replica (max_tokens less those streamed)",
                                lambda r: max(r.decoding_tokens, 0)),
            "prefill_tokens_per_second": ("Prefill speed learnt from times to first byte",
                                          lambda r: r.prefill_tokens_per_s),
            "kv_cache_usage_perc": ("KV-cache usage the replica reports on /metrics",
                                    lambda r: r.reported.get("kv_usage", 0.0)),
            "reported_running": ("Requests running, as the replica reports", lambda r: r.reported.get("running", 0.0)),
            "reported_waiting": ("Requests waiting, as the replica reports", lambda r: r.reported.get("waiting", 0.0)),
            "indexed_blocks": ("Prefix blocks the router believes the replica holds",
                               lambda r: self.index.blocks_held(r.replica_id)),
        }
        replicas = list(self.replicas())
        for name, (doc, read) in gauges.items():
            family = GaugeMetricFamily(f"fleetserve:router_replica_{name}", doc, labels=["replica"])
            for replica in replicas:
                family.add_metric([replica.replica_id], float(read(replica)))
            yield family


class RouterMetrics:
    def __init__(self, replicas: Callable[[], Iterable[Replica]], index: PrefixIndex,
                 offline_held: Callable[[], int] = lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ReplicaStateCollector(replicas, index, offline_held))

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(f"fleetserve:router_{name}", doc, labels, registry=self.registry)

        self.decisions = counter("decisions", "Routing decisions, by policy and chosen replica", ["policy", "replica"])
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens routed, by replica", ["replica"])
        self.prefix_hit_tokens = counter("estimated_prefix_hit_tokens",
                                         "Prompt tokens the prefix index expected cached on the chosen replica",
                                         ["replica"])
        self.retries = counter("retries", "Requests retried on another replica before their first byte, or "
                                          "(reason mid_stream) continued there after it, by the replica that failed "
                                          "and why", ["replica", "reason"])
        self.ejections = counter("ejections", "Times a replica was ejected for failing", ["replica"])
        self.readmissions = counter("readmissions", "Times an ejected (or new) replica was admitted", ["replica"])
        self.stream_failures = counter("stream_failures", "Streams that broke after their first byte reached the "
                                                          "client (ended with an error event)", ["replica"])
        self.stream_migrations = counter("stream_migrations", "Streams whose replica failed mid-way and that could "
                                         "be continued elsewhere, by outcome: resumed (on another replica) or "
                                         "failed (no replica took it: ended with an error event)", ["outcome"])
        self.remote_prefills = counter("remote_prefills", "Prompts prefilled on a prefill replica whose KV hand-off "
                                       "went to the decode replica, by prefill replica", ["replica"])
        self.prefill_fallbacks = counter("prefill_fallbacks", "Remote prefills that failed, so the decode replica "
                                         "prefilled the prompt itself, by prefill replica and why",
                                         ["replica", "reason"])
        self.prefill_handoff_seconds = Histogram(
            "fleetserve:router_prefill_handoff_seconds", "Time from sending a prompt to a prefill replica until its "
            "kv_transfer_params came back, by prefill replica", ["replica"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.requests = counter("requests", "Requests answered, by endpoint and status", ["endpoint", "status"])
        self.offline_held = Counter("fleetserve:router_offline_held_requests", "Offline requests that waited at the "
                                    "router for a replica with room", registry=self.registry)
        self.offline_held_seconds = Counter("fleetserve:router_offline_held_seconds", "Seconds offline requests "
                                            "waited at the router, in all", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
