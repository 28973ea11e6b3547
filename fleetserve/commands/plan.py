"""`fleetserve plan`: the cheapest mix of hardware that serves a workload within its SLO, re-checked by simulation.

    fleetserve plan --trace azure.csv --model-config llama-3-8b.json --hardware h100,a100,l4,a10g \\
        --slo ttft=2000,tpot=100 [--attainment 0.95] [--rate R | --speedup X] [--json plan.json] [--plot DIR]
    fleetserve plan --melange melange_config.json     # Mélange's own input: solve it, no simulation

The JSON (docs/plan.md describes every key) holds `solutions` (`melange`, `split`, `single_type`, each with
`fleet` and `cost_per_hour`), `recheck` (the planned fleet simulated on the whole workload) and
`routing`: the plan the `bucket` policy carries (`fleetserve route --policy bucket --plan plan.json`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fleetserve.commands.bench_arguments import _positive
from fleetserve.commands.replica_arguments import add_replica_arguments
from fleetserve.commands.sim import add_disaggregation_arguments
from fleetserve.workload.traces import TRACE_KINDS


def _edges(text: str) -> list[int]:
    try:
        edges = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want ascending token counts, e.g. 512,2048,8192") from None
    if not edges or edges != sorted(set(edges)) or edges[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want ascending token counts >= 1, e.g. 512,2048,8192")
    return edges


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", help="trace file: Azure or BurstGPT CSV, or Mooncake JSONL")
    source.add_argument("--synthetic", help="synthetic workload, e.g. 'rate=4,n=2000,prompt=lognormal:800:1'")
    source.add_argument("--melange", metavar="FILE", help="Mélange's solver input JSON: solve it as given")
    p.add_argument("--trace-kind", choices=TRACE_KINDS, default=None)
    p.add_argument("--hardware", default=None, help="hardware types to choose from, e.g. h100,a100,l4,a10g")
    p.add_argument("--slo", default=None, help="latency SLO in ms, e.g. ttft=2000,tpot=100")
    p.add_argument("--attainment", type=float, default=0.95, help="share of requests that must meet the SLO")
    p.add_argument("--model", default=None, help="model whose config sizes the roofline model (default: fleetserve's)")
    p.add_argument("--model-config", default=None, help="a Hugging Face config.json (or its folder) instead of --model")
    p.add_argument("--perf", action="append", default=None, metavar="roofline|PROFILE.json",
                   help="step-time model, as `fleetserve sim --perf` (default: roofline)")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--speedup", type=_positive(float), default=None, help="compress the trace's time")
    timing.add_argument("--rate", type=_positive(float), default=None,
                        help="plan for this many requests/s (Poisson arrivals, the trace's lengths)")
    p.add_argument("--num-requests", type=_positive(int), default=None, help="take the first N requests")
    p.add_argument("--duration", type=_positive(float), default=None, help="keep the arrivals of the first N s")
    p.add_argument("--max-prompt-tokens", type=_positive(int), default=None)
    p.add_argument("--max-output-tokens", type=_positive(int), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-edges", type=_edges, default=None, help="prompt-length bucket edges (default: quantiles "
                   "of the workload)")
    p.add_argument("--output-edges", type=_edges, default=None, help="output-length bucket edges")
    p.add_argument("--slice-factor", type=_positive(int), default=1, help="Mélange's slices per bucket")
    p.add_argument("--sample-requests", type=_positive(int), default=200,
                   help="requests of each bucket replayed in a capacity search")
    p.add_argument("--cache", default=None, metavar="PATH", help="capacity cache file (default: "
                   "~/.cache/fleetserve/plan_capacities.json)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the capacity cache")
    p.add_argument("--no-recheck", action="store_true", help="skip simulating the planned fleet on the workload")
    p.add_argument("--max-recheck-rounds", type=int, default=8, help="devices the re-check may add, one per round")
    roles = p.add_argument_group("replica roles (prefill/decode disaggregation)")
    roles.add_argument("--disaggregated-units", default=None, metavar="P:D,...",
                       help="also consider groups of P prefill and D decode devices of one type, e.g. 1:1,1:3, "
                            "priced as their devices, their capacity simulated with the rule below; the plan's "
                            "fleet then carries roles (default: mixed devices only)")
    add_disaggregation_arguments(roles)
    add_replica_arguments(p)
    p.add_argument("--json", default=None, help="write the plan here (the file `route --plan` takes)")
    p.add_argument("--plot", default=None, help="write cost and capacity plots into this folder")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fleetserve.plan.report import print_plan, print_solutions, write_json, write_plots
    console = Console(soft_wrap=True)
    if args.melange is not None:
        from fleetserve.plan.assignment import solve_melange, solve_split
        from fleetserve.plan.melange_input import read_melange
        given = read_melange(args.melange)
        solutions = {"melange": solve_melange(given), "split": solve_split(given)}
        print_solutions(console, solutions)
        if args.json:
            write_json(args.json, {"input": args.melange,
                                   "solutions": {name: {"fleet": a.fleet_spec, "devices": a.devices,
                                                        "cost_per_hour": a.cost_per_hour}
                                                 for name, a in solutions.items()}})
            console.print(f"wrote {args.json}")
        return 0
    from fleetserve.plan.run_plan import plan_from_args
    result = plan_from_args(args, progress=lambda line: console.print(f"  {line}", style="dim"))
    print_plan(console, result)
    if args.json:
        write_json(args.json, result)
        console.print(f"wrote {args.json}")
    if args.plot:
        for path in write_plots(result, Path(args.plot)):
            console.print(f"wrote {path}")
    return 0 if result.get("recheck") is None or result["recheck"]["met"] else 1
