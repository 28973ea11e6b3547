"""Arguments of the sub-commands beyond `generate` (kept apart so cli.py stays an index)."""
from __future__ import annotations

import argparse

from fleetserve.cli import add_engine_arguments, command


@command("bench offline", "offline throughput on random prompts, optionally against a peer in the same run",
         "fleetserve.bench.offline:run")
def _bench_offline(p: argparse.ArgumentParser) -> None:
    add_offline_arguments(p)


def add_offline_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", default="64:512", help="A:B, uniform prompt lengths")
    p.add_argument("--output-len", default="64:256", help="A:B, uniform output lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", choices=["hf", "llamacpp"], default=None,
                   help="also run the identical workload through this peer, in the same run")
    p.add_argument("--peer-batch-size", type=int, default=16, help="batch size for the hf peer")
    p.add_argument("--json", default=None, help="write the results here")
