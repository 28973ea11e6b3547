"""One plan from the `fleetserve plan` flags: workload, hardware, capacities, solutions, re-checks; a result dict.

Hardware on which the model does not fit is left out (and said so); no hardware left is an error. A bucket
that no listed hardware can serve within the SLO is an error naming the bucket and the best attainment
reached on any hardware with its requests arriving one by one.

With `--disaggregated-units 1:1,1:3` the planner also considers groups of one hardware type's devices with
replica roles (fleetserve.plan.disaggregated_units), under the `--disaggregation` rule and KV link flags of
`fleetserve sim`; the plan's fleet then carries roles.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetserve.bench.metrics import parse_slo
from fleetserve.bench.serve import load_workload, shape_workload
from fleetserve.commands.replica_arguments import replica_config
from fleetserve.fleet.disaggregation import DisaggregationRule
from fleetserve.perf.hardware import Hardware, get_hardware
from fleetserve.plan.assignment import Assignment, solve_melange, solve_split
from fleetserve.plan.capacity import BucketCapacity, CapacitySearch, sample_of
from fleetserve.plan.capacity_cache import CapacityCache, default_cache_path
from fleetserve.plan.disaggregated_units import (
    devices_with_roles,
    fleet_spec_with_roles,
    parse_unit_shapes,
    split_key,
    units_for,
)
from fleetserve.plan.planner import (
    Capacities,
    PlanProblem,
    assignment_summary,
    cheapest_single_type,
    find_capacities,
    plan_input,
    routing_plan,
)
from fleetserve.plan.recheck import Recheck, recheck
from fleetserve.plan.workload_buckets import bucket_members
from fleetserve.sim.perf_setup import load_model_config, load_profiles, perf_models

_DISAGGREGATION_FLAGS = ("disaggregation", "min_remote_prefill_tokens", "max_prefill_queue", "kv_link", "kv_dtype")


class PlanError(ValueError):
    """The plan cannot be made; the message says why and what to change."""


def hardware_list(text: str | None) -> list[Hardware]:
    if not text:
        raise PlanError("--hardware is required: the types to choose from, e.g. --hardware h100,a100,l4,a10g")
    names = [name.strip() for name in text.split(",") if name.strip()]
    hardware = [get_hardware(name) for name in names]
    if len({hw.name for hw in hardware}) != len(hardware):
        raise PlanError(f"--hardware {text!r} names a type twice")
    return hardware


def plan_from_args(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda line: None)
    if args.slo is None:
        raise PlanError("--slo is required, e.g. --slo ttft=2000,tpot=100 (milliseconds)")
    slo = parse_slo(args.slo)
    hardware = hardware_list(args.hardware)
    perf_specs = args.perf or ["roofline"]
    profiles = load_profiles(perf_specs)
    model_config, model_name = load_model_config(args.model, args.model_config, profiles)
    fitting, left_out = [], {}
    for hw in hardware:
        try:
            perf = perf_models([(hw, 1)], perf_specs, model_config,
                               {name: p for name, p in profiles.items() if name == hw.name})[hw.name]
            perf.kv_capacity_tokens()
        except ValueError as error:
            left_out[hw.name] = str(error)
            continue
        fitting.append((hw, perf))
    for name, why in left_out.items():
        say(f"left out {name}: {why}")
    if not fitting:
        raise PlanError(f"model {model_name} fits none of the listed hardware: "
                        + "; ".join(f"{name}: {why}" for name, why in left_out.items()))
    workload = shape_workload(
        load_workload(args.trace, args.synthetic, args.trace_kind, args.seed),
        num_requests=args.num_requests, max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens, speedup=args.speedup, rate=args.rate, duration_s=args.duration,
        seed=args.seed)
    config = replica_config(args)
    context = min(args.max_model_len or model_config.max_position_embeddings, model_config.max_position_embeddings)
    too_long = [spec for spec in workload if spec.prompt_tokens + spec.output_tokens > context]
    if too_long:
        longest = max(too_long, key=lambda spec: spec.prompt_tokens + spec.output_tokens)
        raise PlanError(f"{len(too_long)} of {len(workload)} requests need more than the {context}-token context "
                        f"(the longest, {longest.request_id!r}, {longest.prompt_tokens} prompt + "
                        f"{longest.output_tokens} output tokens): no fleet can serve them. Cap the lengths "
                        f"(--max-prompt-tokens, --max-output-tokens) or plan for a model with a longer context")
    search = CapacitySearch(slo, args.attainment, args.sample_requests, seed=args.seed)
    problem = PlanProblem(workload, [hw for hw, _ in fitting], {hw.name: perf for hw, perf in fitting},
                          model_config, config, search, args.input_edges, args.output_edges, args.slice_factor,
                          **role_settings(args, [hw for hw, _ in fitting]))
    cache = CapacityCache(None if args.no_cache else Path(args.cache) if args.cache else default_cache_path())
    say(f"{len(workload)} requests at {problem.total_rate:.3g} req/s; capacities of "
        f"{', '.join(hw.name for hw, _ in fitting)} per length bucket (cache: {cache.path or 'off'})")
    capacities = find_capacities(problem, cache, say)
    check_servable(problem, capacities)
    given = plan_input(problem, capacities)
    solutions: dict[str, Assignment | None] = {"melange": solve_melange(given), "split": solve_split(given),
                                               "single_type": cheapest_single_type(problem, capacities)}
    catalog = {hw.name: hw for hw, _ in fitting}
    rechecks: dict[str, Recheck] = {}
    if not args.no_recheck:
        for name in ("split", "single_type"):
            assignment = solutions[name]
            if assignment is None:
                continue
            units = problem.units_by_name
            rechecks[name] = recheck(workload, devices_with_roles(assignment.devices, units),
                                     routing_plan(capacities, assignment, units), catalog,
                                     problem.perf, model_config.max_position_embeddings, config, slo,
                                     args.attainment, args.max_recheck_rounds, say, cache, problem.disaggregation_for)
        cache.save()
    return result_dict(problem, capacities, solutions, rechecks, model_name, left_out, cache)


def role_settings(args: argparse.Namespace, hardware: list[Hardware]) -> dict[str, Any]:
    """PlanProblem's units, rule and KV link from `--disaggregated-units` and the disaggregation flags; {}
    without units (which refuses the flags)."""
    flags = {"mode": args.disaggregation, "min_remote_prefill_tokens": args.min_remote_prefill_tokens,
             "max_prefill_queue": args.max_prefill_queue}
    links = {"kv_link": args.kv_link, "kv_dtype": args.kv_dtype}
    if args.disaggregated_units is None:
        given = [f"--{name.replace('_', '-')}" for name in _DISAGGREGATION_FLAGS if getattr(args, name) is not None]
        if given:
            raise PlanError(f"{', '.join(given)} need --disaggregated-units, e.g. "
                            f"--disaggregated-units 1:1,1:3 (prefill:decode devices of one type)")
        return {}
    rule = DisaggregationRule(**{name: value for name, value in flags.items() if value is not None})
    return {"units": units_for(hardware, parse_unit_shapes(args.disaggregated_units)), "rule": rule,
            **{name: value for name, value in links.items() if value is not None}}


def check_servable(problem: PlanProblem, capacities: Capacities) -> None:
    members = bucket_members(problem.workload, capacities.buckets)
    for bucket in members:
        if any(grid[bucket[0]][bucket[1]] > 0 for grid in capacities.by_hardware.values()):
            continue
        sample = sample_of(members[bucket], problem.search.sample_requests)
        reached = {hw.name: BucketCapacity(hw, problem.perf[hw.name], problem.model_config.max_position_embeddings,
                                           problem.config, problem.search).attainment_alone(sample)
                   for hw in problem.hardware}
        best = max(reached, key=lambda name: reached[name])
        raise PlanError(
            f"no listed hardware meets the SLO for bucket {capacities.buckets.label(bucket)} ({len(members[bucket])} "
            f"requests) at attainment {problem.search.attainment:g}, even with its requests arriving one by one; "
            f"the best was {best}, with {reached[best]:.1%} of them within the SLO. Loosen the SLO or the "
            f"attainment, add faster hardware, or cap prompt lengths (--max-prompt-tokens)")


def result_dict(problem: PlanProblem, capacities: Capacities,
                solutions: dict[str, Assignment | None], rechecks: dict[str, Recheck], model_name: str,
                left_out: dict[str, str], cache: CapacityCache) -> dict[str, Any]:
    plan = solutions["split"]
    assert plan is not None
    units = problem.units_by_name
    summaries = {name: None if a is None else assignment_summary(a, capacities, units)
                 for name, a in solutions.items()}
    prices = {hw.name: hw.price_per_hour_usd for hw in problem.hardware}

    def cost(devices: dict[str, int]) -> float:
        return sum(count * prices[split_key(key)[0]] for key, count in devices.items())

    for name, check in rechecks.items():
        entry = summaries[name]
        assert entry is not None
        devices = check.rounds[-1].devices
        entry["rechecked"] = {"fleet": fleet_spec_with_roles(devices), "devices": devices, "met": check.met,
                              "cost_per_hour": cost(devices)}
    final = rechecks["split"].rounds[-1].devices if "split" in rechecks else devices_with_roles(plan.devices, units)
    return {
        "model": model_name, "slo": {"ttft_ms": problem.search.slo.ttft_ms, "tpot_ms": problem.search.slo.tpot_ms,
                                     "e2e_ms": problem.search.slo.e2e_ms},
        "attainment": problem.search.attainment, "total_rate": problem.total_rate,
        "workload": problem.workload.describe(), "hardware_left_out": left_out,
        "buckets": {"input_edges": list(capacities.buckets.input_edges),
                    "output_edges": list(capacities.buckets.output_edges),
                    "shares": capacities.shares,
                    "requests": {capacities.buckets.label(b): n for b, n in capacities.members.items()}},
        "capacities": capacities.by_hardware,
        "cache": {"path": str(cache.path) if cache.path else None, "hits": capacities.cache_hits,
                  "misses": capacities.cache_misses},
        "solutions": summaries,
        "recheck": rechecks["split"].to_jsonable() if "split" in rechecks else None,
        "single_type_recheck": rechecks["single_type"].to_jsonable() if "single_type" in rechecks else None,
        "fleet": fleet_spec_with_roles(final), "cost_per_hour": cost(final),
        "routing": routing_plan(capacities, plan, units).to_jsonable(),
        **({"disaggregation": {"units": list(units), **dataclasses.asdict(problem.rule),
                               "kv_link": problem.kv_link, "kv_dtype": problem.kv_dtype}} if units else {}),
    }
