"""`fleetserve sim`: replay a trace (or a synthetic workload, or a live run's arrivals) on a simulated fleet.

Each replica runs the engine's own Scheduler and KVCacheManager on a virtual clock, with step times from a
performance model (`--perf roofline` or a profile from `fleetserve profile`); requests are routed by the
live router's policy objects. The summary, JSON and plots are those of `fleetserve bench serve`.
With `--validate RUN.json` the live run's arrivals are replayed and the two summaries compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

from fleetserve.commands.bench_arguments import _positive
from fleetserve.commands.replica_arguments import add_replica_arguments
from fleetserve.commands.replica_arguments import replica_config as replica_config_of
from fleetserve.commands.route import add_policy_arguments, policy_options
from fleetserve.commands.service_class_arguments import (
    add_service_class_arguments,
    apply_service_classes,
    given_service_class_flags,
    service_class_config,
)
from fleetserve.commands.sim_autoscaling import (
    add_autoscaling_arguments,
    autoscaling_config,
    autoscaling_of,
    print_autoscaling,
)
from fleetserve.commands.sim_goodput import add_goodput_arguments, check_goodput_arguments, run_goodput
from fleetserve.fleet.disaggregation import MODES, DisaggregationRule
from fleetserve.perf.kv_link import KV_DTYPE_BYTES, LINK_KINDS
from fleetserve.sim.config import PREFIX_VIEWS, ReplicaConfig, SimOptions
from fleetserve.workload.traces import TRACE_KINDS

if TYPE_CHECKING:
    from fleetserve.model.config import ModelConfig
    from fleetserve.perf.hardware import FleetEntry
    from fleetserve.sim.config import Disaggregation
    from fleetserve.sim.fleet import Arrival
    from fleetserve.workload.spec import Workload

_DISAGGREGATION_FLAGS = ("disaggregation", "min_remote_prefill_tokens", "max_prefill_queue", "kv_link", "kv_dtype")
_SHAPING_FLAGS = ("speedup", "rate", "scale_lengths", "num_requests", "max_prompt_tokens", "max_output_tokens",
                  "duration")


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", help="trace file: Azure or BurstGPT CSV, or Mooncake JSONL")
    source.add_argument("--synthetic", help="synthetic workload, e.g. 'rate=4,n=200,prompt=uniform:64:512'")
    source.add_argument("--validate", metavar="RUN.json",
                        help="a `bench serve --json` result: replay its requests at their live send times "
                             "and compare the summaries")
    p.add_argument("--requests", metavar="PATH", default=None,
                   help="with --validate: the run's `--requests-out` log (default: the one its JSON names)")
    p.add_argument("--trace-kind", choices=TRACE_KINDS, default=None)
    p.add_argument("--fleet", required=True,
                   help="hardware and counts, e.g. h100:8,l4:16 (cpu:4 for this machine), each optionally with a "
                        "replica role: h100:2:prefill,h100:6:decode (roles: mixed (default), prefill, decode)")
    add_policy_arguments(p.add_argument_group("routing (as `fleetserve route`)"))
    p.add_argument("--perf", action="append", default=None, metavar="roofline|PROFILE.json",
                   help="performance model: 'roofline' or a `fleetserve profile` JSON (used for the hardware "
                        "it was measured on); repeat for mixed fleets (default: roofline)")
    p.add_argument("--model", default=None, help="model whose config.json sizes the roofline model (default: the "
                   "profile's model, else fleetserve's default model)")
    p.add_argument("--model-config", default=None, help="a Hugging Face config.json (or its folder) instead of --model")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--speedup", type=_positive(float), default=None, help="compress the trace's time")
    timing.add_argument("--rate", type=_positive(float, allow_inf=True), default=None,
                        help="ignore the trace's times; Poisson arrivals at this many requests/s")
    p.add_argument("--duration", type=_positive(float), default=None, help="keep the arrivals of the first N s")
    p.add_argument("--num-requests", type=_positive(int), default=None, help="take the first N requests")
    p.add_argument("--scale-lengths", type=_positive(float), default=None, help="multiply prompt and output lengths")
    p.add_argument("--max-prompt-tokens", type=_positive(int), default=None, help="cap prompt lengths")
    p.add_argument("--max-output-tokens", type=_positive(int), default=None, help="cap output lengths")
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic workloads and --rate")
    p.add_argument("--slo", default=None, help="latency SLO in ms for goodput, e.g. ttft=500,tpot=50")
    add_service_class_arguments(p)
    add_replica_arguments(p)
    add_disaggregation_arguments(p.add_argument_group("prefill/decode disaggregation (fleets with replica roles)"))
    add_goodput_arguments(p.add_argument_group("goodput search (DistServe)"))
    add_autoscaling_arguments(p.add_argument_group("autoscaling (the live fleet's autoscaler, on the simulated clock)"))
    p.add_argument("--no-skip", action="store_true", help="simulate every decode step (slower, same results)")
    p.add_argument("--prefix-view", choices=PREFIX_VIEWS, default=SimOptions.prefix_view,
                   help="how the router learns which replica caches a prefix: 'events' (the live router's index, "
                        "fed by each replica's KV events) or 'perfect' (a direct look into every cache)")
    p.add_argument("--no-token-times", action="store_true",
                   help="keep only first-token and end times (saves memory on huge runs; no ITL)")
    p.add_argument("--json", default=None, help="write the result here (the `bench serve` JSON, plus `sim`)")
    p.add_argument("--requests-out", default=None, help="write one JSON line per request here")
    p.add_argument("--plot", default=None, help="write latency CDF and timeline PNGs into this folder")
    p.add_argument("--timeline", default=None, metavar="DIR",
                   help="write each replica's load, queue and cached blocks over time (JSON and PNG) into DIR")
    p.add_argument("--timeline-interval", type=_positive(float), default=10.0,
                   help="seconds of simulated time between --timeline samples")
    p.add_argument("--label", default=None, help="name of this run in tables and plots")


def add_disaggregation_arguments(p: argparse._ActionsContainer) -> None:
    rule = DisaggregationRule()
    p.add_argument("--disaggregation", choices=MODES, default=None,
                   help=f"when a decode replica's request is prefilled on a prefill replica: 'conditional' (a long "
                        f"uncached prompt while the prefill pool keeps up), 'always' or 'never' (default {rule.mode})")
    p.add_argument("--min-remote-prefill-tokens", type=int, default=None,
                   help=f"conditional: prefill remotely only prompts with more uncached tokens than this "
                        f"(default {rule.min_remote_prefill_tokens})")
    p.add_argument("--max-prefill-queue", type=int, default=None,
                   help=f"conditional: prefill locally when the least busy prefill replica has this many requests "
                        f"in flight (default {rule.max_prefill_queue})")
    p.add_argument("--kv-link", choices=sorted(LINK_KINDS), default=None,
                   help="the link KV transfers take (default: nvlink for up to 8 SXM GPUs, pcie for up to 8 other "
                        "GPUs, infiniband for more SXM GPUs, ethernet otherwise)")
    p.add_argument("--kv-dtype", choices=sorted(KV_DTYPE_BYTES), default=None,
                   help="the KV cache's dtype, which sizes the bytes a token's KV transfer moves (default bfloat16)")


def disaggregation_of(args: argparse.Namespace, fleet: list[FleetEntry], model_config: ModelConfig
                      ) -> Disaggregation | None:
    """The rule and KV link from the flags, for a fleet with replica roles; None for a fleet of mixed replicas
    (which refuses the flags)."""
    from fleetserve.perf.kv_link import KVLink, default_link_kind
    from fleetserve.sim.config import Disaggregation
    if all(entry.role == "mixed" for entry in fleet):
        given = [f"--{flag.replace('_', '-')}" for flag in _DISAGGREGATION_FLAGS if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need replica roles in --fleet, e.g. h100:2:prefill,h100:6:decode")
        return None
    given_rule = {"mode": args.disaggregation, "min_remote_prefill_tokens": args.min_remote_prefill_tokens,
                  "max_prefill_queue": args.max_prefill_queue}
    rule = DisaggregationRule(**{name: value for name, value in given_rule.items() if value is not None})
    link = KVLink.of(args.kv_link or default_link_kind(fleet), model_config, args.kv_dtype or "bfloat16")
    return Disaggregation(link, rule)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fleetserve.bench.metrics import SLO, parse_slo
    from fleetserve.bench.report import print_summary, write_plots
    from fleetserve.bench.serve import _prepare_output, load_workload, shape_workload, write_request_log
    from fleetserve.fleet.policies import make_policy
    from fleetserve.perf.hardware import parse_fleet_spec
    from fleetserve.sim.perf_setup import load_model_config, load_profiles, perf_models
    from fleetserve.sim.simulate import sim_result, simulate
    from fleetserve.sim.validate import load_live_run

    console = Console(soft_wrap=True)
    check_goodput_arguments(args)
    if args.validate is None and args.requests is not None:
        raise ValueError("--requests goes with --validate")
    if args.validate is not None:
        given = [f"--{flag.replace('_', '-')}" for flag in _SHAPING_FLAGS if getattr(args, flag) is not None]
        given += given_service_class_flags(args)
        if given:
            raise ValueError(f"{', '.join(given)} cannot be used with --validate: it replays the live run's "
                             f"requests at their send times")
    slo = parse_slo(args.slo) if args.slo is not None else None
    for path, is_dir in ((args.json, False), (args.requests_out, False), (args.plot, True), (args.timeline, True)):
        _prepare_output(path, is_dir)
    fleet = parse_fleet_spec(args.fleet)
    perf_specs = args.perf or ["roofline"]
    profiles = load_profiles(perf_specs)
    model_config, model_name = load_model_config(args.model, args.model_config, profiles)
    perf = perf_models(fleet, perf_specs, model_config, profiles)
    disaggregation = disaggregation_of(args, fleet, model_config)
    autoscaling = autoscaling_of(args, slo, model_config)
    if autoscaling is not None and (args.goodput or args.validate is not None):
        raise ValueError("--autoscale replays one workload: it cannot go with --goodput or --validate")
    replica_config = replica_config_of(args)
    options = SimOptions(skip_decodes=not args.no_skip, record_token_times=not args.no_token_times,
                         prefix_view=args.prefix_view)
    routing_options = policy_options(args)
    policy = make_policy(args.policy, routing_options)

    live = None
    arrivals: list[Arrival] | Workload
    if args.validate is not None:
        live = load_live_run(args.validate, args.requests)
        workload, arrivals = live.workload, live.arrivals
        if slo is None and live.result.get("slo"):
            slo = SLO(**live.result["slo"])
    else:
        workload = shape_workload(
            load_workload(args.trace, args.synthetic, args.trace_kind, args.seed),
            num_requests=args.num_requests, scale_lengths=args.scale_lengths,
            max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
            speedup=args.speedup, rate=args.rate, duration_s=args.duration, seed=args.seed)
        workload = apply_service_classes(workload, args)
        arrivals = workload
    if args.goodput:
        return run_goodput(args, console, workload, fleet, perf, model_config, replica_config, options,
                           routing_options, lambda entries: disaggregation_of(args, entries, model_config))

    console.print(f"simulating {len(workload)} requests of {workload.name} on {args.fleet} "
                  f"({', '.join(f'{name}: {model.name}' for name, model in perf.items())}; model {model_name}; "
                  f"policy {args.policy})")
    sim = simulate(arrivals, fleet, perf, policy, model_config.max_position_embeddings, replica_config, options,
                   timeline_interval_s=args.timeline_interval if args.timeline else None,
                   offline_gate=routing_options.offline_gate, disaggregation=disaggregation,
                   autoscaling=autoscaling)
    config = {"simulated": True, "label": args.label, "fleet": args.fleet, "policy": args.policy,
              "perf": {name: model.name for name, model in perf.items()}, "perf_args": perf_specs,
              "model": model_name, "replica": {"block_size": args.block_size, "max_num_seqs": args.max_num_seqs,
                                               "max_num_batched_tokens": args.max_num_batched_tokens,
                                               "max_model_len": args.max_model_len,
                                               "prefix_caching": not args.no_prefix_caching,
                                               "max_queue": args.max_queue,
                                               "scheduling": dataclasses.asdict(replica_config.scheduling),
                                               # absent when unset, so runs without a bound compare equal
                                               **({"max_step_ms": args.max_step_ms} if args.max_step_ms else {}),
                                               **_speculation_config(replica_config)},
              "offline_gate": dataclasses.asdict(routing_options.offline_gate),
              "trace": args.trace, "trace_kind": args.trace_kind, "synthetic": args.synthetic,
              "validate": args.validate, "speedup": args.speedup, "rate": args.rate, "seed": args.seed,
              "skip_decodes": not args.no_skip, "token_times": not args.no_token_times,
              **service_class_config(args), **_disaggregation_config(disaggregation),
              **autoscaling_config(autoscaling)}
    result = sim_result(sim, workload, config, slo)
    title = args.label or f"{workload.name} on {args.fleet} (simulated)"
    print_summary(result, title=title, console=console)
    _print_sim_stats(console, result["sim"])
    if live is not None:
        from fleetserve.sim.validate import compare_summaries
        rows = compare_summaries(live.result, result)
        result["validation"] = {"live_run": args.validate, "rows": rows}
        _print_validation(console, rows)
    if args.json:
        import json
        from pathlib import Path
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    if args.requests_out:
        write_request_log(sim.records, workload, args.requests_out)
        console.print(f"wrote {args.requests_out}")
    if args.plot:
        for path in write_plots(sim.records, args.plot, title=title):
            console.print(f"wrote {path}")
    if args.timeline and sim.timeline is not None:
        for path in sim.timeline.write(args.timeline, title):
            console.print(f"wrote {path}")
    if "autoscaling" in result["sim"]:
        from fleetserve.sim.autoscaling_plot import write_autoscaling
        for folder in (folder for folder in (args.plot, args.timeline) if folder):
            for path in write_autoscaling(result["sim"]["autoscaling"], folder, title):
                console.print(f"wrote {path}")
    return 0


def _disaggregation_config(disaggregation: Disaggregation | None) -> dict:
    """The rule and link; absent for a fleet of mixed replicas, so its runs compare equal."""
    if disaggregation is None:
        return {}
    link = disaggregation.link
    return {"disaggregation": {**dataclasses.asdict(disaggregation.rule), "kv_link": link.kind.name,
                               "kv_bytes_per_token": link.bytes_per_token}}


def _speculation_config(config: ReplicaConfig) -> dict:
    """The replica's speculative config and acceptance model; absent without speculation, so runs compare equal."""
    if config.speculative is None or config.spec_acceptance is None:
        return {}
    acceptance = config.spec_acceptance
    return {"speculative_config": config.speculative.to_dict(),
            "spec_acceptance": {"rate": acceptance.rate, "trace": acceptance.source,
                                "draft_availability": acceptance.draft_availability, "seed": acceptance.seed}}


def _print_sim_stats(console, stats: dict) -> None:
    for name, entry in stats["hardware"].items():
        utilization = entry["utilization"]
        hits = entry["prefix_cache_hit_rate"]
        console.print(f"{name}: {entry['replicas']} replicas ({entry['perf_model']}, {entry['kv_blocks']} KV blocks "
                      f"each), utilization {'-' if utilization is None else f'{utilization:.0%}'}, "
                      f"{entry['preemptions']} preemptions, prefix-cache hits "
                      f"{'-' if hits is None else f'{hits:.0%}'}, {entry['steps']} steps "
                      f"({entry['full_steps']} in full)")
    speculation = stats.get("speculation")
    if speculation is not None:
        console.print(f"speculation: {speculation['num_drafts']:,} verifications of "
                      f"{speculation['num_draft_tokens']:,} draft tokens, "
                      f"{speculation['num_accepted_tokens']:,} accepted "
                      f"({speculation['acceptance_rate']:.1%}), {speculation['mean_accepted_per_draft']:.2f} "
                      "accepted per verification")
    disaggregation = stats.get("disaggregation")
    if disaggregation is not None:
        mean_s = disaggregation["mean_transfer_s"]
        console.print(f"disaggregation: {disaggregation['remote_prefills']:,} remote prefills, "
                      f"{disaggregation['local_prefills']:,} local ({disaggregation['fallbacks']:,} refused by the "
                      f"prefill replica); {disaggregation['transferred_tokens']:,} tokens of KV "
                      f"({disaggregation['transferred_bytes'] / 1e9:,.2f} GB) over {disaggregation['link']}, "
                      f"mean transfer {'-' if mean_s is None else f'{mean_s * 1000:.2f} ms'}; "
                      f"{disaggregation['import_recomputes']:,} imports recomputed for lack of blocks")
    if "autoscaling" in stats:
        print_autoscaling(console, stats["autoscaling"])
    speed = stats["requests_per_cpu_s"]
    console.print(f"simulated {stats['simulated_s']:.1f} s in {stats['wall_s']:.2f} s wall "
                  f"({'-' if speed is None else f'{speed:,.0f}'} requests per CPU second)")


def _print_validation(console, rows: list[dict]) -> None:
    from rich.table import Table
    table = Table(title="simulated against live (error = sim / live - 1)")
    for column in ("metric", "live", "sim", "error"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        error = row["error"]
        table.add_row(row["metric"], _fmt(row["live"]), _fmt(row["sim"]),
                      "-" if error is None else f"{error:+.1%}")
    console.print(table)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.2f}"
