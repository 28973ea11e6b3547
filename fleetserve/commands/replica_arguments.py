"""A simulated replica's engine settings as flags, shared by `sim` and `plan`; defaults as `fleetserve serve`."""
from __future__ import annotations

import argparse

from fleetserve.commands.bench_arguments import _positive
from fleetserve.commands.scheduling_arguments import add_scheduling_arguments, scheduling_policy
from fleetserve.sim.config import ReplicaConfig

_DEFAULTS = ReplicaConfig()


def add_replica_arguments(p: argparse.ArgumentParser) -> None:
    engine = p.add_argument_group("replica (the engine's scheduler settings; defaults as `fleetserve serve`)")
    engine.add_argument("--block-size", type=_positive(int), default=_DEFAULTS.block_size)
    engine.add_argument("--max-num-seqs", type=_positive(int), default=_DEFAULTS.max_num_seqs)
    engine.add_argument("--max-num-batched-tokens", type=_positive(int), default=_DEFAULTS.max_num_batched_tokens)
    engine.add_argument("--max-step-ms", type=_positive(float), default=_DEFAULTS.max_step_ms,
                        help="bound each step's predicted time (ms): decodes keep their pace and prompts go in "
                        "smaller chunks; the step cost is the replica's performance model (--perf) (default: no bound)")
    engine.add_argument("--max-model-len", type=_positive(int), default=None)
    engine.add_argument("--no-prefix-caching", action="store_true")
    engine.add_argument("--max-queue", type=_positive(int), default=_DEFAULTS.max_queue,
                        help="waiting requests before 429")
    add_scheduling_arguments(engine)


def replica_config(args: argparse.Namespace) -> ReplicaConfig:
    return ReplicaConfig(args.block_size, args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len,
                         not args.no_prefix_caching, args.max_queue, scheduling_policy(args), args.max_step_ms)
