"""Workloads to replay: public traces, synthetic arrival processes, prompts synthesized to length, and
service classes and priorities tagged or merged in."""
from fleetserve.workload.classes import HIGH_PRIORITY, arriving_at, merged, tagged, with_priority_fraction
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

__all__ = ["HIGH_PRIORITY", "LengthDist", "RequestSpec", "TraceError", "Workload", "arriving_at", "merged",
           "parse_synthetic_spec", "read_azure", "read_burstgpt", "read_mooncake", "read_trace", "synthesize_prompts",
           "synthetic_workload", "tagged", "with_priority_fraction"]
