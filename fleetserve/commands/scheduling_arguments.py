"""The scheduling-policy flags, shared by the engine's commands and the simulator's replicas; every default is
SchedulingPolicy's own."""
from __future__ import annotations

import argparse

from fleetserve.engine.scheduling_policy import SCHEDULING_POLICIES, SchedulingPolicy

_DEFAULTS = SchedulingPolicy()


def add_scheduling_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--scheduling-policy", choices=SCHEDULING_POLICIES, default=_DEFAULTS.policy,
                        help="fcfs: arrival order; priority: by the requests' `priority` (lower first), the "
                        "largest preempted first")
    parser.add_argument("--priority-aging-s", type=float, default=_DEFAULTS.priority_aging_s,
                        help="seconds of waiting that raise a request by one priority level (0: never)")
    parser.add_argument("--offline-token-share", type=float, default=_DEFAULTS.offline_token_share,
                        help="share of a step's token budget that offline requests may use, less the online "
                        "tokens of the step, while online work is present")
    parser.add_argument("--online-kv-reserve", type=float, default=_DEFAULTS.online_kv_reserve,
                        help="share of the KV cache that offline requests leave free for online ones")


def scheduling_policy(args: argparse.Namespace) -> SchedulingPolicy:
    return SchedulingPolicy(args.scheduling_policy, args.priority_aging_s, args.offline_token_share,
                            args.online_kv_reserve)
