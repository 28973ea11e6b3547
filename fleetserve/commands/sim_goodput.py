"""`fleetserve sim --goodput`: instead of one replay, the highest request rate at which `--attainment` of
requests meet `--slo` on the fleet (DistServe's goodput), per GPU; with `--goodput-ratios`, on every
prefill:decode split of the fleet's devices too (fleetserve.sim.goodput)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleetserve.commands.bench_arguments import _positive
from fleetserve.sim.goodput import GoodputSearch

if TYPE_CHECKING:
    from fleetserve.fleet.policies import PolicyOptions
    from fleetserve.model.config import ModelConfig
    from fleetserve.perf.hardware import FleetEntry
    from fleetserve.perf.model import PerfModel
    from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
    from fleetserve.workload.spec import Workload

_REFUSED_WITH_GOODPUT = ("validate", "plot", "timeline", "requests_out")


def add_goodput_arguments(p: argparse._ActionsContainer) -> None:
    p.add_argument("--goodput", action="store_true",
                   help="find the highest request rate at which --attainment of requests meet every --slo limit "
                        "(DistServe's goodput), and per GPU, by replaying the workload at rates bisected")
    p.add_argument("--attainment", type=float, default=GoodputSearch.attainment,
                   help="with --goodput: the share of requests that must meet the SLO")
    p.add_argument("--goodput-ratios", action="store_true",
                   help="with --goodput: also every prefill:decode split of the fleet's devices (one hardware type; "
                        "8 devices: 1:7 ... 7:1), with the --disaggregation rule (default conditional)")
    p.add_argument("--goodput-start-rate", type=_positive(float), default=GoodputSearch.start_rate,
                   help="with --goodput: the rate (req/s) where the search starts doubling or halving")
    p.add_argument("--goodput-iterations", type=int, default=GoodputSearch.iterations,
                   help="with --goodput: bisection steps after the bracketing")


def check_goodput_arguments(args: argparse.Namespace) -> None:
    given = [f"--{flag.replace('_', '-')}" for flag in _REFUSED_WITH_GOODPUT if getattr(args, flag) is not None]
    if args.goodput:
        if args.slo is None:
            raise ValueError("--goodput needs --slo, e.g. --slo ttft=500,tpot=50 (ms)")
        if given:
            raise ValueError(f"{', '.join(given)} cannot be used with --goodput, which replays the workload at many "
                             f"rates; give --json for the search's result")
    elif args.goodput_ratios:
        raise ValueError("--goodput-ratios goes with --goodput")


def run_goodput(args: argparse.Namespace, console: Any, workload: Workload, fleet: list[FleetEntry],
                perf: dict[str, PerfModel], model_config: ModelConfig, replica_config: ReplicaConfig,
                options: SimOptions, routing_options: PolicyOptions,
                disaggregation_of: Callable[[list[FleetEntry]], Disaggregation | None]) -> int:
    """`disaggregation_of(fleet)`: the rule and KV link the flags give a fleet (None for one of mixed replicas)."""
    from fleetserve.bench.metrics import parse_slo
    from fleetserve.fleet.policies import make_policy
    from fleetserve.perf.hardware import FleetEntry
    from fleetserve.sim.goodput import RateTrials, find_goodput, ratio_search
    from fleetserve.sim.simulate import simulate

    slo = parse_slo(args.slo)
    search = GoodputSearch(slo, args.attainment, args.goodput_start_rate, args.goodput_iterations)

    def goodput_of(entries: list[FleetEntry]):
        disaggregation = disaggregation_of(entries)

        def run(shaped):
            return simulate(shaped, entries, perf, make_policy(args.policy, routing_options),
                            model_config.max_position_embeddings, replica_config, options,
                            offline_gate=routing_options.offline_gate, disaggregation=disaggregation).records

        trials = RateTrials(workload, run, args.seed)
        return find_goodput(lambda rate: trials.attainment_at(rate, slo), sum(count for _, count, _ in entries),
                            search)

    console.print(f"goodput of {args.fleet} on {len(workload)} requests of {workload.name}: the highest rate at which "
                  f"{search.attainment:.0%} of requests meet {args.slo}")
    found = goodput_of(fleet)
    console.print(f"{args.fleet}: {found.rate:.4g} req/s, {found.per_gpu:.4g} req/s per GPU "
                  f"({len(found.trials)} rates simulated)")
    result: dict[str, Any] = {"fleet": args.fleet, "slo": args.slo, "attainment": search.attainment,
                              "workload": workload.describe(), "goodput": found.to_jsonable()}
    if args.goodput_ratios:
        hardware = {entry.hardware.name: entry.hardware for entry in fleet}
        if len(hardware) != 1:
            raise ValueError(f"--goodput-ratios splits one hardware type's devices; --fleet {args.fleet!r} has "
                             f"{sorted(hardware)}")
        (only,) = hardware.values()
        devices = sum(count for _, count, _ in fleet)
        ratios = ratio_search(devices, lambda prefill, decode: goodput_of(
            [FleetEntry(only, prefill, "prefill"), FleetEntry(only, decode, "decode")]))
        _print_ratios(console, ratios, only.name)
        result["ratios"] = ratios.to_jsonable()
    if args.json:
        import json
        from pathlib import Path
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


def _print_ratios(console: Any, ratios, hardware: str) -> None:
    from rich.table import Table
    table = Table(title=f"goodput by prefill:decode split of {hardware}")
    for column in ("prefill:decode", "req/s", "req/s per GPU", "attainment"):
        table.add_column(column, justify="right")
    best = ratios.best
    for (prefill, decode), found in sorted(ratios.table.items()):
        mark = " (best)" if (prefill, decode) == best else ""
        table.add_row(f"{prefill}:{decode}{mark}", f"{found.rate:.4g}", f"{found.per_gpu:.4g}",
                      "-" if found.attainment is None else f"{found.attainment:.1%}")
    console.print(table)
