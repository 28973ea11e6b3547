"""What a replica's Prometheus /metrics say, in the router's terms: the same quantity goes by different
names in different engines, so each name maps to one key, summed over its label sets."""
from __future__ import annotations

import logging

from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger("fleetserve.fleet")

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
    "block_size": ("fleetserve:kv_cache_block_size",),
}
_KEY_OF = {name: key for key, names in METRIC_NAMES.items() for name in names}


def read_replica_metrics(text: str) -> dict[str, float]:
    """The samples the router reads, by METRIC_NAMES key, summed over their label sets. Text that stops
    being valid exposition format yields what came before the fault."""
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = _KEY_OF.get(sample.name)
                if key is not None:
                    values[key] = values.get(key, 0.0) + sample.value
    except ValueError as exc:
        logger.debug("fleetserve router: unreadable /metrics text (%s); keeping %s", exc, sorted(values))
    return values
