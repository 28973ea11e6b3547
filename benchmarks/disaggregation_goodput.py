"""Goodput per GPU of colocated serving, static and conditional prefill/decode disaggregation (simulated).

    .venv/bin/python benchmarks/disaggregation_goodput.py [--devices 8] [--num-requests 600] \\
        [--workloads azure_conv,summarisation,mooncake] [--out benchmarks/results/disaggregation]

One model, Llama-3.1-8B (benchmarks/models/llama-3.1-8b.json: Llama-3-8B's architecture with a 128k context,
so the Mooncake trace's long prompts fit), on `--devices` H100s under the roofline model, the engine's
default settings, the `least_loaded` policy and the KV link the fleet would have (NVLink within one node).
Goodput is DistServe's: the highest request rate at which 90% of requests meet both the TTFT and the TPOT
SLO (fleetserve.sim.goodput), divided by the devices. Three workloads:

- azure_conv: the first --num-requests requests of the Azure LLM 2023 conversation trace, its arrival
  pattern stretched to each rate;
- summarisation: a synthetic long-prompt mix, prompts uniform in 3,000-12,000 tokens, outputs uniform in
  16-128 tokens, Poisson arrivals, no shared prefixes (seed 7);
- mooncake: the first --num-requests requests of the Mooncake synthetic trace (shared prefixes by hash id),
  prompts capped at 32,768 tokens, its arrival pattern stretched to each rate.

and three SLO regimes per workload (`SLOS`): tight TTFT, tight TPOT and balanced, set from each workload's
unloaded latencies (a few times its TTFT, about 1.5-2.5 times the 7.7 ms unloaded TPOT). Fleets:

- colocated: every device mixed;
- static: `always` disaggregation at every prefill:decode split, the best reported;
- conditional: the `conditional` rule at every split, its thresholds (`min_remote_prefill_tokens`,
  `max_prefill_queue`) from `CONDITIONAL_THRESHOLDS`, the best reported.

Each fleet's records at a rate are simulated once and scored for all three SLOs; the search brackets from a
per-workload start rate by doubling or halving, then bisects `--iterations` times (the rate is resolved to
1/2**iterations of the bracket). A fleet whose simulation cannot finish (requests left unfinished) is
listed with its error and left out of the comparison. Writes each workload's fleets to
fleets_<workload>.json and, over all workloads found there, results.json and table.md into --out (so
workloads may be run one at a time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetserve.bench.metrics import SLO  # noqa: E402
from fleetserve.fleet.disaggregation import DisaggregationRule  # noqa: E402
from fleetserve.fleet.policies import make_policy  # noqa: E402
from fleetserve.perf.hardware import FleetEntry, get_hardware  # noqa: E402
from fleetserve.perf.kv_link import KVLink, default_link_kind  # noqa: E402
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions  # noqa: E402
from fleetserve.sim.goodput import Goodput, GoodputSearch, RateTrials, find_goodput, splits  # noqa: E402
from fleetserve.sim.perf_setup import load_model_config, perf_models  # noqa: E402
from fleetserve.sim.simulate import simulate  # noqa: E402
from fleetserve.workload.spec import Workload  # noqa: E402
from fleetserve.workload.synthetic import synthetic_workload  # noqa: E402
from fleetserve.workload.traces import read_trace  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
MODEL = ROOT / "benchmarks" / "models" / "llama-3.1-8b.json"
MAX_MODEL_LEN = 131072
POLICY = "least_loaded"
ATTAINMENT = 0.9
MOONCAKE_PROMPT_CAP = 32768
SUMMARISATION = "prompt=uniform:3000:12000,output=uniform:16:128,seed=7"

# (ttft ms, tpot ms) per workload and regime; unloaded on 8 H100s the TTFT p90 is about 50 ms (azure_conv),
# 400 ms (summarisation) and 1.4 s (mooncake, its longest prompts), the TPOT about 7.7 ms.
SLOS: dict[str, dict[str, SLO]] = {
    "azure_conv": {"tight_ttft": SLO(ttft_ms=100, tpot_ms=50), "tight_tpot": SLO(ttft_ms=1000, tpot_ms=12),
                   "balanced": SLO(ttft_ms=300, tpot_ms=20)},
    "summarisation": {"tight_ttft": SLO(ttft_ms=600, tpot_ms=50), "tight_tpot": SLO(ttft_ms=5000, tpot_ms=12),
                      "balanced": SLO(ttft_ms=1500, tpot_ms=20)},
    "mooncake": {"tight_ttft": SLO(ttft_ms=2000, tpot_ms=50), "tight_tpot": SLO(ttft_ms=15000, tpot_ms=12),
                 "balanced": SLO(ttft_ms=5000, tpot_ms=20)},
}
# Where the search starts, in req/s per device (near the colocated goodput, so few doublings are needed).
START_PER_DEVICE = {"azure_conv": 16.0, "summarisation": 2.0, "mooncake": 1.0}
# (min_remote_prefill_tokens, max_prefill_queue) tried for the conditional rule: Dynamo's short queue (a
# backed-up prefill pool sends prompts home), and a long one (only short prompts stay home), at two lengths.
CONDITIONAL_THRESHOLDS = [(512, 2), (512, 64), (4096, 64)]


def load(name: str, num_requests: int) -> Workload:
    if name == "azure_conv":
        return read_trace(TRACES / "azure_llm_2023_conv.csv").head(num_requests)
    if name == "summarisation":
        return synthetic_workload(num_requests, rate=1.0, prompt_len="uniform:3000:12000",
                                  output_len="uniform:16:128", seed=7)
    if name == "mooncake":
        return read_trace(TRACES / "mooncake_synthetic.jsonl").head(num_requests).cap_lengths(MOONCAKE_PROMPT_CAP)
    raise ValueError(f"unknown workload {name!r}; choose from {sorted(SLOS)}")


def fleets(devices: int) -> list[tuple[str, dict, list[FleetEntry], DisaggregationRule | None]]:
    """(kind, settings, fleet, rule) for every fleet tried."""
    h100 = get_hardware("h100")
    tried: list[tuple[str, dict, list[FleetEntry], DisaggregationRule | None]] = [
        ("colocated", {}, [FleetEntry(h100, devices)], None)]
    for prefill, decode in splits(devices):
        roles = [FleetEntry(h100, prefill, "prefill"), FleetEntry(h100, decode, "decode")]
        tried.append(("static", {"prefill": prefill, "decode": decode}, roles, DisaggregationRule("always")))
        for tokens, queue in CONDITIONAL_THRESHOLDS:
            tried.append(("conditional", {"prefill": prefill, "decode": decode, "min_remote_prefill_tokens": tokens,
                                          "max_prefill_queue": queue}, roles,
                          DisaggregationRule("conditional", tokens, queue)))
    return tried


def run_workload(name: str, args: argparse.Namespace, model_config, perf) -> list[dict]:
    workload = load(name, args.num_requests)
    start = START_PER_DEVICE[name] * args.devices
    rows = []
    for kind, settings, fleet, rule in fleets(args.devices):
        disaggregation = None if rule is None else Disaggregation(KVLink.of(default_link_kind(fleet), model_config),
                                                                  rule)

        def run(shaped: Workload, fleet=fleet, disaggregation=disaggregation):
            return simulate(shaped, fleet, perf, make_policy(POLICY), MAX_MODEL_LEN,
                            ReplicaConfig(max_model_len=MAX_MODEL_LEN, max_queue=10**6),
                            SimOptions(record_token_times=False), disaggregation=disaggregation).records

        trials = RateTrials(workload, run)
        started = time.process_time()
        goodputs: dict[str, Goodput] = {}
        try:
            for regime, slo in SLOS[name].items():
                search = GoodputSearch(slo, ATTAINMENT, start_rate=start, iterations=args.iterations)
                goodputs[regime] = find_goodput(lambda rate, slo=slo: trials.attainment_at(rate, slo), args.devices,
                                                search)
        except RuntimeError as error:  # a simulation that cannot finish: the fleet is reported, not compared
            row = {"workload": name, "kind": kind, **settings, "error": str(error)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            continue
        row = {"workload": name, "kind": kind, **settings, "simulations": len(trials._records),
               "cpu_s": round(time.process_time() - started, 1),
               **{regime: {"rate": g.rate, "per_gpu": g.per_gpu, "attainment": g.attainment}
                  for regime, g in goodputs.items()}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def cells(rows: list[dict]) -> list[dict]:
    """Per (workload, regime): the best fleet of each kind and how conditional compares."""
    out = []
    for name in dict.fromkeys(row["workload"] for row in rows):
        for regime in SLOS[name]:
            best = {}
            for kind in ("colocated", "static", "conditional"):
                candidates = [row for row in rows if row["workload"] == name and row["kind"] == kind
                              and "error" not in row]
                # Highest goodput; among equals, the first tried (fewer prefill devices, lower thresholds).
                top = max(candidates, key=lambda row: row[regime]["per_gpu"])
                best[kind] = {key: value for key, value in top.items()
                              if key in ("prefill", "decode", "min_remote_prefill_tokens", "max_prefill_queue")}
                best[kind]["per_gpu"] = top[regime]["per_gpu"]
            others = max(best["colocated"]["per_gpu"], best["static"]["per_gpu"])
            conditional = best["conditional"]["per_gpu"]
            verdict = "better" if conditional > others else "equal" if conditional == others else "worse"
            slo = SLOS[name][regime]
            failed = [{key: value for key, value in row.items() if key not in ("workload", "error")}
                      for row in rows if row["workload"] == name and "error" in row]
            out.append({"workload": name, "regime": regime, "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
                        **best, "conditional_vs_best_other": verdict, **({"not_compared": failed} if failed else {})})
    return out


def table(summary: list[dict]) -> str:
    lines = ["| workload | SLO (TTFT / TPOT ms) | colocated | static (P:D) | conditional (P:D, tokens, queue) | "
             "conditional vs best other |", "|---|---|---:|---:|---:|---|"]
    for cell in summary:
        static, conditional = cell["static"], cell["conditional"]
        lines.append(
            f"| {cell['workload']} | {cell['regime']} ({cell['slo']['ttft_ms']:g} / {cell['slo']['tpot_ms']:g}) | "
            f"{cell['colocated']['per_gpu']:.2f} | {static['per_gpu']:.2f} ({static['prefill']}:{static['decode']}) | "
            f"{conditional['per_gpu']:.2f} ({conditional['prefill']}:{conditional['decode']}, "
            f"{conditional['min_remote_prefill_tokens']}, {conditional['max_prefill_queue']}) | "
            f"{cell['conditional_vs_best_other']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "disaggregation")
    parser.add_argument("--devices", type=int, default=8, help="H100s in every fleet")
    parser.add_argument("--num-requests", type=int, default=600, help="requests of each workload replayed")
    parser.add_argument("--iterations", type=int, default=4, help="bisection steps of each goodput search")
    parser.add_argument("--workloads", default=",".join(SLOS), help="comma-separated, of " + ", ".join(SLOS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_config, _ = load_model_config(None, str(MODEL))
    perf = perf_models([(get_hardware("h100"), 1)], ["roofline"], model_config)
    settings = {"model": MODEL.name, "hardware": "h100", "devices": args.devices, "policy": POLICY,
                "perf": "roofline", "attainment": ATTAINMENT, "num_requests": args.num_requests,
                "iterations": args.iterations, "summarisation": SUMMARISATION,
                "mooncake_prompt_cap": MOONCAKE_PROMPT_CAP, "conditional_thresholds": CONDITIONAL_THRESHOLDS}
    for name in args.workloads.split(","):
        started = time.perf_counter()
        rows = run_workload(name, args, model_config, perf)
        (args.out / f"fleets_{name}.json").write_text(json.dumps(
            {**settings, "workload": name, "wall_s": round(time.perf_counter() - started, 1), "fleets": rows},
            indent=2) + "\n", encoding="utf-8")
    runs = [json.loads((args.out / f"fleets_{name}.json").read_text()) for name in SLOS
            if (args.out / f"fleets_{name}.json").is_file()]
    rows = [row for run in runs for row in run["fleets"]]
    summary = cells(rows)
    result = {**settings, "wall_s": {run["workload"]: run["wall_s"] for run in runs}, "cells": summary}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "table.md").write_text(table(summary), encoding="utf-8")
    print(table(summary))


if __name__ == "__main__":
    main()
