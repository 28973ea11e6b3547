"""`fleetserve bench offline`: offline throughput on random prompts (fleetserve.bench.offline)."""
from __future__ import annotations

import argparse

from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options


def add_offline_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.set_defaults(max_num_batched_tokens=1024)  # offline favours throughput over inter-token latency
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", default="64:512", help="A:B, uniform prompt lengths")
    p.add_argument("--output-len", default="64:256", help="A:B, uniform output lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", choices=["hf", "llamacpp"], default=None,
                   help="also run the identical workload through this peer, in the same run")
    p.add_argument("--peer-batch-size", type=int, default=16, help="batch size for the hf peer")
    p.add_argument("--json", default=None, help="write the results here")


def run(args: argparse.Namespace) -> int:
    from fleetserve.bench.offline import run_offline
    return run_offline(args, engine_options(args))
