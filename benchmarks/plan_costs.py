"""What heterogeneity saves: `fleetserve plan` on two workloads at several rates and SLOs.

    .venv/bin/python benchmarks/plan_costs.py [--out benchmarks/results/plan_costs] [--cache PATH]

Hardware h100, a100, l4 and a10g at the catalog's prices; Llama-3.1-8B (benchmarks/models/llama-3.1-8b.json,
its 128k context, so that no trace request is too long) under the roofline model; attainment target 0.95.
Workloads: the Azure LLM 2023 conversation trace (its first --num-requests requests re-timed to each rate,
their own lengths), and a BurstGPT-shaped mix of short and long requests (lognormal prompts and outputs with
a heavy tail). For each case the planned cost of Mélange's program, the split variant and the cheapest
single type, each re-checked by simulating the whole workload, and the wall time of the plan (capacities
and re-checks come from the cache where an earlier case computed them with the same settings).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"
MODEL = ROOT / "benchmarks" / "models" / "llama-3.1-8b.json"
HARDWARE = "h100,a100,l4,a10g"
CASES = [
    # (name, workload flags, rate req/s, SLO)
    ("azure_conv", ["--trace", str(TRACES / "azure_llm_2023_conv.csv")], 5.5, "ttft=2000,tpot=100"),
    ("azure_conv", ["--trace", str(TRACES / "azure_llm_2023_conv.csv")], 40.0, "ttft=2000,tpot=100"),
    ("azure_conv", ["--trace", str(TRACES / "azure_llm_2023_conv.csv")], 40.0, "ttft=500,tpot=50"),
    ("burst_mix", ["--synthetic", "n=6000,rate=1,prompt=lognormal:700:1.4,output=lognormal:250:1.1,seed=7"], 5.5,
     "ttft=2000,tpot=100"),
    ("burst_mix", ["--synthetic", "n=6000,rate=1,prompt=lognormal:700:1.4,output=lognormal:250:1.1,seed=7"], 40.0,
     "ttft=2000,tpot=100"),
    ("burst_mix", ["--synthetic", "n=6000,rate=1,prompt=lognormal:700:1.4,output=lognormal:250:1.1,seed=7"], 40.0,
     "ttft=500,tpot=50"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_costs")
    parser.add_argument("--cache", default=None, help="capacity cache (default: a fresh one in --out)")
    parser.add_argument("--num-requests", type=int, default=6000, help="requests of the trace to plan for")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or str(args.out / "capacities.json")
    rows = []
    for name, workload, rate, slo in CASES:
        label = f"{name}_{rate:g}rps_{slo.replace('=', '').replace(',', '_')}"
        out = args.out / f"{label}.json"
        argv = [sys.executable, "-m", "fleetserve.cli", "plan", *workload, "--num-requests", str(args.num_requests),
                "--rate", str(rate), "--hardware", HARDWARE, "--model-config", str(MODEL), "--max-model-len", "131072",
                "--slo", slo,
                "--attainment", "0.95", "--cache", cache, "--json", str(out)]
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if not out.is_file():
            print(f"{label}: failed ({done.returncode})\n{done.stderr[-2000:]}", flush=True)
            continue
        result = json.loads(out.read_text())
        solutions = result["solutions"]
        row = {"case": label, "rate": rate, "slo": slo, "wall_s": round(wall, 1), "exit": done.returncode,
               "cache": result["cache"]}
        for key in ("melange", "split", "single_type"):
            entry = solutions.get(key)
            row[key] = None if entry is None else {
                "fleet": entry["fleet"], "cost": entry["cost_per_hour"],
                "rechecked": entry.get("rechecked")}
        row["recheck_attainment"] = (result.get("recheck") or {}).get("slo_attainment")
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
