"""What the router reads from a replica's Prometheus text: one key per quantity across engines, summed
over label sets, and whatever came before a fault in the text."""
from __future__ import annotations

from fleetserve.fleet.replica_metrics import read_replica_metrics

VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 7.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 0.25
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{model_name="m"} 1200.0
# HELP fleetserve:kv_cache_block_size Tokens per KV block.
# TYPE fleetserve:kv_cache_block_size gauge
fleetserve:kv_cache_block_size{model_name="m"} 32.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
"""


def test_vllm_names_are_read_and_summed_over_label_sets():
    assert read_replica_metrics(VLLM_TEXT) == {"running": 5.0, "waiting": 7.0, "kv_usage": 0.25,
                                               "prefix_cache_hits": 1200.0, "block_size": 32.0}


def test_sglang_and_llamacpp_names_map_to_the_same_keys():
    text = ('sglang:num_running_reqs{model_name="m"} 4\nsglang:num_queue_reqs{model_name="m"} 1\n'
            'sglang:token_usage{model_name="m"} 0.5\nllamacpp:requests_processing 2\n')
    assert read_replica_metrics(text) == {"running": 6.0, "waiting": 1.0, "kv_usage": 0.5}


def test_text_that_breaks_off_keeps_what_came_before():
    assert read_replica_metrics("vllm:num_requests_waiting 2\nthis is not a sample\n") == {"waiting": 2.0}
    assert read_replica_metrics("<html>not found</html>") == {}
