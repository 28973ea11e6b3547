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
    p.set_defaults(max_num_batched_tokens=1024)  # offline favours throughput over inter-token latency
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--input-len", default="64:512", help="A:B, uniform prompt lengths")
    p.add_argument("--output-len", default="64:256", help="A:B, uniform output lengths")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer", choices=["hf", "llamacpp"], default=None,
                   help="also run the identical workload through this peer, in the same run")
    p.add_argument("--peer-batch-size", type=int, default=16, help="batch size for the hf peer")
    p.add_argument("--json", default=None, help="write the results here")


@command("serve", "the OpenAI-compatible HTTP server over one engine (--replicas N: N engines behind a router)",
         "fleetserve.commands.serve:run")
def _serve(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.serve import add_serve_arguments
    add_engine_arguments(p)
    add_serve_arguments(p)


@command("bench serve", "replay a trace or synthetic load against any OpenAI-compatible server",
         "fleetserve.bench.serve:run")
def _bench_serve(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.bench_arguments import add_bench_serve_arguments
    add_bench_serve_arguments(p)


@command("bench compare", "show benchmark result files side by side, with ratios against the first",
         "fleetserve.bench.serve:run_compare")
def _bench_compare(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.bench_arguments import add_bench_compare_arguments
    add_bench_compare_arguments(p)


@command("route", "one OpenAI-compatible endpoint in front of many replicas (ours or any OpenAI-compatible engine)",
         "fleetserve.commands.route:run")
def _route(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.route import add_route_arguments
    add_route_arguments(p)


@command("sim", "replay a trace on a simulated fleet with the engine's scheduler and the router's policies",
         "fleetserve.commands.sim:run")
def _sim(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.sim import add_sim_arguments
    add_sim_arguments(p)


@command("profile", "measure the engine's step time on this machine and fit a model for `fleetserve sim --perf`",
         "fleetserve.commands.profile:run")
def _profile(p: argparse.ArgumentParser) -> None:
    from fleetserve.commands.profile import add_profile_arguments
    add_profile_arguments(p)
