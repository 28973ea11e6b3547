"""Workloads to replay: public traces, synthetic arrival processes, and prompts synthesized to length."""
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import LengthDist, parse_synthetic_spec, synthetic_workload
from fleetserve.workload.traces import (
    TraceError,
    read_azure,
    read_burstgpt,
    read_mooncake,
    read_trace,
    synthesize_prompts,
)

__all__ = ["LengthDist", "RequestSpec", "TraceError", "Workload", "parse_synthetic_spec", "read_azure",
           "read_burstgpt", "read_mooncake", "read_trace", "synthesize_prompts", "synthetic_workload"]
