"""Prometheus metrics with vLLM's names and meanings, so dashboards built for vLLM map one to one.

Gauges and counters that the engine already keeps are read at scrape time; latency histograms are fed
from the engine thread's output callback, which is kept to a few dictionary operations per output.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetserve.engine.outputs import RequestOutput
from fleetserve.speculative.stats import SpeculationStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets, so histogram quantiles line up with theirs.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)


class EngineStateCollector(Collector):
    """Reads the engine's own counters when Prometheus scrapes; nothing to keep in sync."""

    def __init__(self, model_name: str, engine_source: Callable[[], object | None]) -> None:
        self.model_name = model_name
        self.engine_source = engine_source

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family

    def collect(self) -> Iterable[Metric]:
        async_engine = self.engine_source()
        yield self._gauge("fleetserve:engine_ready", "1 once the model is loaded and the engine steps",
                          0 if async_engine is None else 1)
        if async_engine is None:
            return
        engine = async_engine.engine
        kv = engine.kv_cache
        yield self._gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                          engine.num_running)
        yield self._gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                          engine.num_waiting + async_engine.pending)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv.usage)
        yield self._gauge("fleetserve:kv_cache_free_blocks", "KV-cache blocks free (cached-but-unused count "
                          "as free)", kv.num_free_blocks)
        yield self._gauge("fleetserve:kv_cache_total_blocks", "KV-cache blocks in the pool", kv.num_blocks)
        yield self._gauge("fleetserve:kv_cache_block_size", "Tokens per KV-cache block", kv.block_size)
        yield self._gauge("fleetserve:requests_in_flight", "Requests with an open stream on this server",
                          async_engine.num_in_flight)
        yield self._gauge("fleetserve:max_model_len", "Context length in tokens", engine.max_model_len)
        yield self._counter("vllm:prefix_cache_queries", "Prefix-cache queries, in terms of number of queried "
                            "tokens.", kv.prefix_cache_queries)
        yield self._counter("vllm:prefix_cache_hits", "Prefix-cache hits, in terms of number of cached tokens.",
                            kv.prefix_cache_hits)
        yield self._counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                            engine.num_prompt_tokens_total)
        yield self._counter("vllm:generation_tokens", "Number of generation tokens processed.",
                            engine.num_generation_tokens_total)
        yield self._counter("vllm:num_preemptions", "Cumulative number of preemptions from the engine.",
                            engine.scheduler.num_preemptions)
        if engine.speculation is not None:
            yield from self._speculation(engine.speculation.stats)
        yield from self._kv_exports(engine)

    def _kv_exports(self, engine: Any) -> Iterable[Metric]:
        exports = engine.kv_exports
        pending, pending_bytes = exports.pending()
        yield self._gauge("fleetserve:kv_exports_pending", "Prefilled prompts whose KV waits here for a decode "
                          "replica", pending)
        yield self._gauge("fleetserve:kv_exports_pending_bytes", "Host memory held by those KV exports",
                          pending_bytes)
        yield self._counter("fleetserve:kv_exports", "Prompt KV exports made for decode replicas",
                            exports.num_exported)
        yield self._counter("fleetserve:kv_exports_fetched", "KV exports fetched by decode replicas",
                            exports.num_taken)
        yield self._counter("fleetserve:kv_exports_dropped", "KV exports dropped unfetched (expired or over the "
                            "byte cap)", exports.num_dropped)
        yield self._counter("fleetserve:kv_imported_tokens", "Prompt tokens whose KV came from a prefill replica",
                            engine.num_imported_tokens_total)

    def _speculation(self, stats: SpeculationStats) -> Iterable[Metric]:
        yield self._counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", stats.num_drafts)
        yield self._counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", stats.num_draft_tokens)
        yield self._counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.",
                            stats.num_accepted_tokens)
        family = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens_per_pos",
                                     "Accepted tokens per draft position.", labels=["model_name", "position"])
        for position, count in enumerate(stats.accepted_per_position):
            family.add_metric([self.model_name, str(position)], count)
        yield family


class ServerMetrics:
    def __init__(self, model_name: str, engine_source: Callable[[], object | None]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(EngineStateCollector(model_name, engine_source))
        labels = ["model_name"]

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.",
                                    REQUEST_LATENCY_BUCKETS)
        self.prompt_tokens = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                       TOKEN_BUCKETS)
        self.generation_tokens = histogram("vllm:request_generation_tokens",
                                           "Number of generation tokens processed.", TOKEN_BUCKETS)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               labels + ["finished_reason"], registry=self.registry)
        self.http_errors = Counter("fleetserve:http_errors", "Error responses sent, by status code.",
                                   labels + ["status"], registry=self.registry)
        self.kv_imports = Counter("fleetserve:kv_imports", "Requests that imported their prompt's KV from a "
                                  "prefill replica", labels, registry=self.registry).labels(model_name)
        self.kv_import_bytes = Counter("fleetserve:kv_import_bytes", "Bytes of prefilled KV fetched", labels,
                                       registry=self.registry).labels(model_name)
        self.kv_import_seconds = histogram("fleetserve:kv_import_seconds", "Time to fetch a request's prefilled KV",
                                           TTFT_BUCKETS)
        self.kv_import_fallbacks = Counter("fleetserve:kv_import_fallbacks", "Requests sent prefilled KV that "
                                           "computed their prompt here instead, by reason", labels + ["reason"],
                                           registry=self.registry)
        self._last_token_time: dict[str, float] = {}
        self._lock = threading.Lock()

    def on_output(self, out: RequestOutput) -> None:
        """Called on the engine thread for every output."""
        metrics = out.metrics
        now = metrics.last_token_time
        with self._lock:
            previous = self._last_token_time.get(out.request_id)
            if out.new_token_ids and now is not None:
                if previous is None:
                    if metrics.ttft is not None:
                        self.ttft.observe(metrics.ttft)
                else:
                    self.itl.observe(now - previous)
                self._last_token_time[out.request_id] = now
            if out.finished:
                self._last_token_time.pop(out.request_id, None)
        if not out.finished:
            return
        if metrics.e2e is not None:
            self.e2e.observe(metrics.e2e)
        if metrics.queue_time is not None:
            self.queue_time.observe(metrics.queue_time)
        self.prompt_tokens.observe(out.num_prompt_tokens)
        self.generation_tokens.observe(len(out.token_ids))
        self.success.labels(self.model_name, out.finish_reason or "abort").inc()

    def kv_import_done(self, nbytes: int, seconds: float) -> None:
        self.kv_imports.inc()
        self.kv_import_bytes.inc(nbytes)
        self.kv_import_seconds.observe(seconds)

    def kv_import_fallback(self, reason: str) -> None:
        self.kv_import_fallbacks.labels(self.model_name, reason).inc()

    def count_error(self, status: int) -> None:
        self.http_errors.labels(self.model_name, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
