"""One entry point: fleetserve generate | serve | batch | route | bench offline | bench serve | bench compare | sim |
plan | profile.

Each command names the function that adds its flags and the one that runs it, as "module:function"
strings: a command's modules are imported only when that command is used, so `fleetserve sim` never loads
the HTTP server and `fleetserve route` never loads the engine.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Command:
    name: str  # "bench serve" is the sub-command `serve` of the group `bench`
    help: str
    add_arguments: str  # "module:function" taking the command's ArgumentParser
    run: str  # "module:function" taking the parsed arguments, returning the exit code


COMMANDS = (
    Command("generate", "generate text for one prompt, streaming it",
            "fleetserve.commands.generate:add_generate_arguments", "fleetserve.commands.generate:run"),
    Command("serve", "the OpenAI-compatible HTTP server over one engine (--replicas N: N engines behind a router)",
            "fleetserve.commands.serve:add_arguments", "fleetserve.commands.serve:run"),
    Command("batch", "run an OpenAI batch file (JSONL) through an engine in this process, as vllm run-batch",
            "fleetserve.commands.batch:add_batch_arguments", "fleetserve.commands.batch:run"),
    Command("route", "one OpenAI-compatible endpoint in front of many replicas (ours or any OpenAI-compatible "
            "engine)", "fleetserve.commands.route:add_route_arguments", "fleetserve.commands.route:run"),
    Command("bench offline", "offline throughput on random prompts, optionally against a peer in the same run",
            "fleetserve.commands.bench_offline:add_offline_arguments", "fleetserve.commands.bench_offline:run"),
    Command("bench serve", "replay a trace or synthetic load against any OpenAI-compatible server",
            "fleetserve.commands.bench_arguments:add_bench_serve_arguments", "fleetserve.bench.serve:run"),
    Command("bench compare", "show benchmark result files side by side, with ratios against the first",
            "fleetserve.commands.bench_arguments:add_bench_compare_arguments", "fleetserve.bench.serve:run_compare"),
    Command("sim", "replay a trace on a simulated fleet with the engine's scheduler and the router's policies",
            "fleetserve.commands.sim:add_sim_arguments", "fleetserve.commands.sim:run"),
    Command("plan", "the cheapest mix of hardware that serves a workload within its SLO, re-checked by simulation",
            "fleetserve.commands.plan:add_plan_arguments", "fleetserve.commands.plan:run"),
    Command("profile", "measure the engine's step time on this machine and fit a model for `fleetserve sim --perf`",
            "fleetserve.commands.profile:add_profile_arguments", "fleetserve.commands.profile:run"),
)


def _load(reference: str) -> Callable:
    module_name, function_name = reference.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `argv`, only the command it names gets its flags (the rest are
    listed with their help), so only that command's modules are imported."""
    words = [arg for arg in argv if not arg.startswith("-")][:2] if argv is not None else None
    parser = argparse.ArgumentParser(prog="fleetserve", description="LLM serving: engine, fleet, simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        group_name, _, leaf = command.name.partition(" ")
        where = sub
        if leaf:
            if group_name not in groups:
                group = sub.add_parser(group_name, help=f"{group_name} sub-commands")
                groups[group_name] = group.add_subparsers(dest="subcommand", required=True)
            where = groups[group_name]
        p = where.add_parser(leaf or command.name, help=command.help, description=command.help)
        path = command.name.split(" ")
        if words is None or words[:len(path)] == path:
            _load(command.add_arguments)(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(_load(args._run)(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        name = " ".join(filter(None, [args.command, getattr(args, "subcommand", None)]))
        print(f"fleetserve {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
