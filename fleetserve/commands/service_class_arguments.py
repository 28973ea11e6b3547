"""Service-class and priority flags of `fleetserve sim` and `fleetserve bench serve`: tag the workload, give a
share of it a high priority, and merge in an offline batch.

Order: the main workload (`--trace`/`--synthetic`, shaped by the timing and length flags) is tagged with
`--service-class`/`--priority`, then `--high-priority-fraction` picks its high-priority share; the offline
workload is read, cut to `--offline-num-requests`, given the same length scaling and caps, re-timed
(`--offline-at-start`, `--offline-rate`), tagged offline and merged in by arrival time.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

from fleetserve.commands.argument_types import fraction, positive
from fleetserve.engine.sampling_params import SERVICE_CLASSES
from fleetserve.workload.classes import HIGH_PRIORITY, arriving_at, merged, tagged, with_priority_fraction
from fleetserve.workload.spec import Workload
from fleetserve.workload.synthetic import parse_synthetic_spec, synthetic_workload
from fleetserve.workload.traces import TRACE_KINDS, read_trace

# Flags that shape the workload; `--validate` replays a live run's own, so it refuses them.
SERVICE_CLASS_FLAGS = ("service_class", "priority", "high_priority_fraction", "offline_trace", "offline_synthetic")
_OFFLINE_SHAPING = ("offline_trace_kind", "offline_num_requests", "offline_at_start", "offline_rate")


def add_service_class_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("service classes and priorities (priority: lower runs first, as vLLM)")
    group.add_argument("--service-class", choices=SERVICE_CLASSES, default=None,
                       help="serve every request of the workload as this class (default: online, or the trace's "
                            "service_class column)")
    group.add_argument("--priority", type=int, default=None,
                       help="give every request of the workload this priority (default: 0, or the trace's "
                            "priority column)")
    group.add_argument("--high-priority-fraction", type=fraction, default=None, metavar="F",
                       help="give a random share F (0..1, drawn with --seed) of the workload's requests "
                            "--high-priority")
    group.add_argument("--high-priority", type=int, default=HIGH_PRIORITY, metavar="P",
                       help=f"the priority of that share (default {HIGH_PRIORITY})")
    offline = group.add_mutually_exclusive_group()
    offline.add_argument("--offline-trace", metavar="PATH", default=None,
                         help="merge in this trace's requests as offline work")
    offline.add_argument("--offline-synthetic", metavar="SPEC", default=None,
                         help="merge in a synthetic workload as offline work, e.g. 'rate=inf,n=2000,"
                              "prompt=uniform:256:2048,output=uniform:64:512' (its seed defaults to --seed + 1)")
    group.add_argument("--offline-trace-kind", choices=TRACE_KINDS, default=None,
                       help="skip format detection of --offline-trace")
    group.add_argument("--offline-num-requests", type=positive(int), default=None, metavar="N",
                       help="take the first N offline requests")
    timing = group.add_mutually_exclusive_group()
    timing.add_argument("--offline-at-start", action="store_true",
                        help="every offline request arrives at 0 s, as a batch submitted at once")
    timing.add_argument("--offline-rate", type=positive(float, allow_inf=True), default=None,
                        help="offline requests arrive as a Poisson process at this many requests/s (default: "
                             "their own times)")


def given_service_class_flags(args: argparse.Namespace) -> list[str]:
    """The service-class flags set on the command line, as typed."""
    names = [*SERVICE_CLASS_FLAGS, *_OFFLINE_SHAPING]
    given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) not in (None, False)]
    return given + (["--high-priority"] if args.high_priority != HIGH_PRIORITY else [])


def apply_service_classes(workload: Workload, args: argparse.Namespace) -> Workload:
    """The shaped main workload with the service-class flags applied (see the module docstring)."""
    has_offline = args.offline_trace is not None or args.offline_synthetic is not None
    orphans = [flag for flag in given_service_class_flags(args)
               if flag.removeprefix("--").replace("-", "_") in _OFFLINE_SHAPING]
    if orphans and not has_offline:
        raise ValueError(f"{', '.join(orphans)} shape the offline workload; give --offline-trace or "
                         f"--offline-synthetic too")
    if args.high_priority_fraction is None and args.high_priority != HIGH_PRIORITY:
        raise ValueError(f"--high-priority {args.high_priority} needs --high-priority-fraction, the share of "
                         f"requests to give it")
    workload = tagged(workload, args.service_class, args.priority)
    if args.high_priority_fraction is not None:
        workload = with_priority_fraction(workload, args.high_priority_fraction, args.high_priority, args.seed)
    if not has_offline:
        return workload
    return merged([workload, _offline_workload(args)])


def _offline_workload(args: argparse.Namespace) -> Workload:
    seed = args.seed + 1  # the offline draws differ from the main workload's under the same --seed
    if args.offline_trace is not None:
        offline = read_trace(args.offline_trace, args.offline_trace_kind)
    else:
        spec = parse_synthetic_spec(args.offline_synthetic)
        spec.setdefault("seed", seed)
        offline = synthetic_workload(**spec)
    if args.offline_num_requests is not None:
        offline = offline.head(args.offline_num_requests)
    if args.scale_lengths is not None:
        offline = offline.scale_lengths(args.scale_lengths)
    if args.max_prompt_tokens is not None or args.max_output_tokens is not None:
        offline = offline.cap_lengths(args.max_prompt_tokens, args.max_output_tokens)
    if args.offline_at_start or args.offline_rate is not None:
        offline = arriving_at(offline, math.inf if args.offline_at_start else args.offline_rate, seed)
    return tagged(offline, "offline")


def service_class_config(args: argparse.Namespace) -> dict[str, Any]:
    """The service-class flags for a result's config; empty when none is given, so other configs keep their
    shape."""
    if not given_service_class_flags(args):
        return {}
    names = [*SERVICE_CLASS_FLAGS, "high_priority", *_OFFLINE_SHAPING]
    return {"service_classes": {name: getattr(args, name) for name in names}}
