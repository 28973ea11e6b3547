"""Routing policies against workloads they were not tuned on: every policy, five workloads, two loads each.

    .venv/bin/python benchmarks/policy_suite.py [--jobs 2] [--policies ...] [--workloads ...]
        [--out benchmarks/results/policy_suite]

Simulated fleet: 8 H100s serving a Llama-3.1-8B-shaped model (benchmarks/models/llama-3.1-8b.json) with a
128k context, roofline step times, engine defaults otherwise; SLO TTFT <= 2 s and TPOT <= 100 ms.

Workloads (fixed seeds; `describe` in the JSON has each one's shape):
- azure_conv: the Azure LLM 2023 conversation trace, first 4,000 requests (nothing shared);
- mooncake: the Mooncake synthetic trace, all 3,993 requests (shared prefixes as its hash ids say);
- long_sessions: 400 synthetic multi-turn conversations, 10 turns each, 15 s apart, prompts averaging about 12,000
  tokens, every turn extending its session's previous prompt, and every prompt opening with the same
  64-token system header (as a chat template gives);
- shared_system_prompts: many users over 4 long (3,000-token) system prompts;
- no_sharing: synthetic prompts with nothing in common.

Load: each workload's capacity is first measured as the request rate least_loaded completes when every
request arrives at once (the fleet's saturated throughput for that request mix); the workload is then
replayed at 60% and 90% of it (traces by compressing their own timeline, synthetic workloads by their
arrival rate), so "90%" means a cache-blind balancer would keep the fleet 90% busy. The table gives each
policy's goodput (requests per second within the SLO) over least_loaded's in the same cell.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fleetserve.bench.metrics import SLO
from fleetserve.fleet.policies import POLICY_NAMES, make_policy
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.simulate import sim_result, simulate
from fleetserve.workload.spec import Workload
from fleetserve.workload.synthetic import synthetic_workload
from fleetserve.workload.traces import read_trace

ROOT = Path(__file__).resolve().parent.parent
TRACES = Path(os.environ.get("FLEETSERVE_TRACES", ROOT.parent / "shared" / "traces"))
MODEL_CONFIG = ROOT / "benchmarks" / "models" / "llama-3.1-8b.json"
FLEET = "h100:8"
MAX_MODEL_LEN = 131072
SLO_MS = SLO(ttft_ms=2000, tpot_ms=100)
LOADS = (0.6, 0.9)
REFERENCE = "least_loaded"
SESSION_TURNS = 10
SESSIONS = 400
THINK_TIME_S = 15.0


def azure_conv(rate: float) -> Workload:
    trace = read_trace(TRACES / "azure_llm_2023_conv.csv").head(4000)
    return at_rate(trace, rate)


def mooncake(rate: float) -> Workload:
    return at_rate(read_trace(TRACES / "mooncake_synthetic.jsonl"), rate)


def long_sessions(rate: float) -> Workload:
    # Sessions start at the rate that makes the mean arrival rate over the whole replay `rate`: turns
    # come THINK_TIME_S apart, so the replay is the sessions' start span plus one session's length.
    start_span = SESSIONS * SESSION_TURNS / rate - (SESSION_TURNS - 1) * THINK_TIME_S
    if math.isfinite(rate) and start_span <= 0:
        raise ValueError(f"{rate:g} req/s is too fast for {SESSIONS} sessions of {SESSION_TURNS} turns "
                         f"{THINK_TIME_S:g} s apart")
    return synthetic_workload(None, rate=(SESSIONS - 1) / start_span if math.isfinite(rate) else rate,
                              sessions=SESSIONS, turns_per_session=SESSION_TURNS, prompt_len="lognormal:2000:0.8",
                              output_len="lognormal:350:0.8", think_time_s=THINK_TIME_S, shared_prefix_groups=1,
                              shared_prefix_tokens=64, seed=1)


def shared_system_prompts(rate: float) -> Workload:
    return synthetic_workload(3000, rate=rate, prompt_len="lognormal:400:0.8", output_len="lognormal:250:0.8",
                              shared_prefix_groups=4, shared_prefix_tokens=3000, seed=2)


def no_sharing(rate: float) -> Workload:
    return synthetic_workload(3000, rate=rate, prompt_len="lognormal:1500:1.0", output_len="lognormal:250:0.8",
                              seed=3)


WORKLOADS = {"azure_conv": azure_conv, "mooncake": mooncake, "long_sessions": long_sessions,
             "shared_system_prompts": shared_system_prompts, "no_sharing": no_sharing}


def at_rate(trace: Workload, rate: float) -> Workload:
    """The trace with its own timeline compressed to `rate` requests per second (all at once for inf)."""
    if math.isinf(rate):
        return all_at_once(trace)
    native = (len(trace) - 1) / trace.duration_s
    return trace.scaled(rate / native)


def all_at_once(workload: Workload) -> Workload:
    requests = [dataclasses.replace(spec, arrival_s=0.0) for spec in workload]
    return Workload(requests, workload.name, workload.source, [*workload.transforms, "every request at 0 s"])


def run_cell(workload_name: str, rate: float, policy: str) -> dict:
    """One simulation: the workload at `rate` requests per second (inf: all at once), routed by `policy`."""
    workload = WORKLOADS[workload_name](rate)
    if math.isinf(rate):
        workload = all_at_once(workload)
    model_config = ModelConfig.from_file(MODEL_CONFIG)
    fleet = parse_fleet_spec(FLEET)
    perf = {hardware.name: RooflineModel(model_config, hardware) for hardware, *_ in fleet}
    config = ReplicaConfig(max_model_len=MAX_MODEL_LEN, max_queue=max(len(workload), 1))
    started = time.perf_counter()
    sim = simulate(workload, fleet, perf, make_policy(policy), model_config.max_position_embeddings, config,
                   SimOptions(record_token_times=False))
    result = sim_result(sim, workload, {"policy": policy}, SLO_MS)
    hardware = result["sim"]["hardware"][fleet[0][0].name]
    prompt_tokens = [replica.kv.prefix_cache_queries for replica in sim.replicas]
    return {"workload": workload_name, "rate": rate, "policy": policy, "requests": len(workload),
            "completed": result["completed"], "throughput": result["request_throughput"],
            "goodput": result["goodput"], "slo_attainment": result["slo_attainment"],
            "ttft_p50_ms": result["ttft_ms"]["p50"], "ttft_p90_ms": result["ttft_ms"]["p90"],
            "tpot_p50_ms": result["tpot_ms"]["p50"], "prefix_hit_rate": hardware["prefix_cache_hit_rate"],
            "utilization": hardware["utilization"], "preemptions": hardware["preemptions"],
            "busiest_replica_prompt_share": max(prompt_tokens) / sum(prompt_tokens) if sum(prompt_tokens) else None,
            "wall_s": time.perf_counter() - started}


def run_all(cells: list[tuple[str, float, str]], jobs: int) -> list[dict]:
    if jobs <= 1:
        return [run_cell(*cell) for cell in cells]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(run_cell, *zip(*cells)))


def ratio_table(rows: list[dict], policies: list[str], workloads: list[str]) -> list[str]:
    """Markdown: goodput over least_loaded's, one row per (workload, load), one column per policy."""
    by_cell = {(row["workload"], row["load"], row["policy"]): row for row in rows}
    lines = [f"| workload | load | {REFERENCE} goodput (req/s) | " + " | ".join(policies) + " |",
             "|---|---|---|" + "---|" * len(policies)]
    for workload in workloads:
        for load in LOADS:
            reference = by_cell[(workload, load, REFERENCE)]["goodput"] or 0.0
            cells = []
            for policy in policies:
                goodput = by_cell[(workload, load, policy)]["goodput"] or 0.0
                cells.append(f"{goodput / reference:.2f}" if reference > 0 else "-")
            lines.append(f"| {workload} | {load:.0%} | {reference:.2f} | " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], policies: list[str], workloads: list[str], path: Path) -> None:
    from matplotlib.figure import Figure
    by_cell = {(row["workload"], row["load"], row["policy"]): row for row in rows}
    figure = Figure(figsize=(12, 5), layout="constrained")
    axes = figure.add_subplot()
    groups = [(workload, load) for workload in workloads for load in LOADS]
    width = 0.8 / len(policies)
    for offset, policy in enumerate(policies):
        ratios = []
        for workload, load in groups:
            reference = by_cell[(workload, load, REFERENCE)]["goodput"] or 0.0
            goodput = by_cell[(workload, load, policy)]["goodput"] or 0.0
            ratios.append(goodput / reference if reference > 0 else 0.0)
        axes.bar([i + offset * width for i in range(len(groups))], ratios, width, label=policy)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.axhline(0.97, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))],
                    [f"{workload.replace('_', ' ')}\n{load:.0%}" for workload, load in groups], fontsize="small",
                    rotation=20)
    axes.set_ylabel(f"goodput / {REFERENCE}'s")
    axes.set_title(f"Routing policies on {FLEET} (simulated), SLO TTFT <= 2 s, TPOT <= 100 ms")
    axes.legend(fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--jobs", type=int, default=2, help="simulations run at once (one per core)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "policy_suite"))
    args = parser.parse_args()
    policies = [name for name in args.policies.split(",") if name]
    if REFERENCE not in policies:
        policies.insert(0, REFERENCE)
    workloads = [name for name in args.workloads.split(",") if name]
    unknown = sorted(set(workloads) - set(WORKLOADS)) + sorted(set(policies) - set(POLICY_NAMES))
    if unknown:
        parser.error(f"unknown workloads or policies {unknown}; workloads: {list(WORKLOADS)}, "
                     f"policies: {list(POLICY_NAMES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    capacity_rows = run_all([(workload, math.inf, REFERENCE) for workload in workloads], args.jobs)
    capacity = {row["workload"]: row["throughput"] for row in capacity_rows}
    for workload in workloads:
        print(f"{workload}: capacity {capacity[workload]:.2f} req/s (least_loaded, every request at once)",
              flush=True)
    cells = [(workload, load * capacity[workload], policy)
             for workload in workloads for load in LOADS for policy in policies]
    rows = run_all(cells, args.jobs)
    for row, (workload, rate, _) in zip(rows, cells):
        row["load"] = rate / capacity[workload]
        row["load"] = min(LOADS, key=lambda load: abs(load - row["load"]))
    table = ratio_table(rows, policies, workloads)
    print("\n".join(table))
    described = {workload: WORKLOADS[workload](1.0).describe() for workload in workloads}
    (out / "suite.json").write_text(json.dumps({
        "fleet": FLEET, "model_config": str(MODEL_CONFIG.relative_to(ROOT)), "max_model_len": MAX_MODEL_LEN,
        "slo": dataclasses.asdict(SLO_MS), "loads": LOADS, "reference": REFERENCE, "capacity_req_s": capacity,
        "workloads": described, "rows": rows, "table": table,
        "wall_s": time.perf_counter() - started}, indent=2) + "\n", encoding="utf-8")
    plot(rows, policies, workloads, out / "goodput_ratios.png")
    print(f"wrote {out / 'suite.json'} and {out / 'goodput_ratios.png'} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
