"""GPU-hours of the `slo` autoscaling policy against `target` and a static fleet sized for the peak (simulated).

    .venv/bin/python benchmarks/autoscaling_sim.py [--out benchmarks/results/autoscaling] [--workloads day,bursty]

One model, Llama-3-8B (benchmarks/models/llama-3-8b.json), on A100s under the roofline model, the engine's
default settings and the `least_loaded` policy; the SLO is TTFT 1,000 ms and TPOT 50 ms, attainment the
metrics module's (both met). Each replica's cold start is the simulator's default model (15 s fixed plus
16 GB of weights at 7 GB/s: 17.3 s); decisions every 5 s, 10 s upscale and 60 s downscale delays, bounds
1-16 replicas; every autoscaled fleet starts with one replica. Two workloads:

- day: a day of the Azure LLM 2023 conversation trace (one hour, 19,366 requests). Each of the 24 hours of
  the day replays that hour compressed `DAY_COMPRESSION` times (so a day lasts 24 x 3600 / 30 = 2,880
  simulated seconds), thinned to a diurnal rate: a request at day time t (in hours) is kept with
  probability d(t) x PEAK_RATE / (trace rate x compression), d(t) = 0.2 + 0.8 x (1 - cos(2 pi (t - 4) / 24)) / 2
  (a trough of 20% of the peak at 04:00, the peak at 16:00), draws seeded. Request ids get the hour.
- bursty: shaped after BurstGPT's findings (the trace itself is not on this machine): an hour of arrivals
  whose gaps are gamma-distributed with shape 0.5 (coefficient of variation 1.4, BurstGPT's bursty
  conversation log fits a gamma below 1), at a rate that swings: BASE x (1 + 0.5 sin(2 pi t / 900)), times
  2.5 inside bursts that start as a Poisson process (one per 600 s on average) and last 60-240 s. Lengths
  lognormal, prompts mean 700 (sigma 1.0), answers mean 250 (sigma 0.9), capped to fit the context.

Fleets per workload: `slo` (the policy's default headroom); `target` at each of TARGETS ongoing requests per
replica (the peer is the target run with the highest attainment at or below the slo run's: the slo policy
at equal or better attainment); and static fleets of one size for the whole run, bisected between 1 and
the slo run's peak, the smallest whose attainment is at least the slo policy's reported as "static, sized
for the peak". A full run takes about 5 minutes of CPU. Writes results.json
and table.md into --out.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetserve.bench.metrics import SLO  # noqa: E402
from fleetserve.fleet.autoscaler import AutoscalerConfig  # noqa: E402
from fleetserve.fleet.policies import make_policy  # noqa: E402
from fleetserve.perf.cold_start import model_weight_bytes  # noqa: E402
from fleetserve.perf.hardware import get_hardware, parse_fleet_spec  # noqa: E402
from fleetserve.sim.config import Autoscaling, SimOptions  # noqa: E402
from fleetserve.sim.perf_setup import load_model_config, perf_models  # noqa: E402
from fleetserve.sim.simulate import sim_result, simulate  # noqa: E402
from fleetserve.workload.spec import RequestSpec, Workload  # noqa: E402
from fleetserve.workload.traces import read_trace  # noqa: E402

TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
MODEL = ROOT / "benchmarks" / "models" / "llama-3-8b.json"
HARDWARE = "a100"
SLO_TARGET = SLO(ttft_ms=1000.0, tpot_ms=50.0)
DAY_COMPRESSION = 30.0
PEAK_RATE = 40.0  # requests/s at 16:00
BURSTY_BASE_RATE = 10.0
TARGETS = (16.0, 24.0, 32.0)
SCALING = AutoscalerConfig(min_replicas=1, max_replicas=16, interval_s=5.0, upscale_delay_s=10.0,
                           downscale_delay_s=60.0, ttft_slo_ms=SLO_TARGET.ttft_ms, tpot_slo_ms=SLO_TARGET.tpot_ms)
OPTIONS = SimOptions(record_token_times=False)


def diurnal(hour: float) -> float:
    return 0.2 + 0.8 * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2


def azure_day(seed: int = 0) -> Workload:
    hour = read_trace(TRACE)
    hour_s = 3600 / DAY_COMPRESSION
    trace_rate = len(hour) / hour.duration_s
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(24):
        keep = rng.random(len(hour))
        for spec, draw in zip(hour, keep):
            offset = spec.arrival_s / DAY_COMPRESSION
            if draw < diurnal(index + offset / hour_s) * PEAK_RATE / (trace_rate * DAY_COMPRESSION):
                requests.append(replace(spec, request_id=f"h{index}-{spec.request_id}",
                                        arrival_s=index * hour_s + offset))
    return Workload(requests, "azure_day", f"{TRACE.name}, 24 hours compressed {DAY_COMPRESSION:g}x, diurnal "
                                           f"peak {PEAK_RATE:g} req/s, seed {seed}")


def bursty(seed: int = 0, duration_s: float = 3600.0) -> Workload:
    rng = np.random.default_rng(seed)
    grid = np.arange(0.0, duration_s + 1.0, 1.0)
    rate = BURSTY_BASE_RATE * (1 + 0.5 * np.sin(2 * np.pi * grid / 900))
    start = rng.exponential(600.0)
    while start < duration_s:
        length = rng.uniform(60.0, 240.0)
        rate[(grid >= start) & (grid < start + length)] *= 2.5
        start += length + rng.exponential(600.0)
    # A gamma renewal process in operational time, mapped to clock time through the cumulative rate.
    cumulative = np.concatenate([[0.0], np.cumsum(rate[:-1])])
    shape = 0.5
    operational = np.cumsum(rng.gamma(shape, 1 / shape, size=int(cumulative[-1] * 1.2) + 100))
    operational = operational[operational < cumulative[-1]]
    arrivals = np.interp(operational, cumulative, grid)
    n = len(arrivals)
    prompts = np.clip(np.rint(rng.lognormal(math.log(700) - 0.5, 1.0, n)), 1, 6000).astype(int)
    outputs = np.clip(np.rint(rng.lognormal(math.log(250) - 0.9 ** 2 / 2, 0.9, n)), 1, 2000).astype(int)
    requests = [RequestSpec(f"bursty-{i}", float(arrivals[i]), int(prompts[i]), int(outputs[i])) for i in range(n)]
    return Workload(requests, "bursty", f"BurstGPT-shaped: gamma shape {shape}, base {BURSTY_BASE_RATE:g} req/s, "
                                        f"seed {seed}")


def run(workload: Workload, replicas: int, scaling: AutoscalerConfig | None) -> dict:
    model_config, _ = load_model_config(None, str(MODEL), {})
    fleet = parse_fleet_spec(f"{HARDWARE}:{replicas}")
    perf = perf_models(fleet, ["roofline"], model_config, {})
    autoscaling = Autoscaling(scaling, model_weight_bytes(model_config)) if scaling is not None else None
    started = time.process_time()
    sim = simulate(workload, fleet, perf, make_policy("least_loaded"), model_config.max_position_embeddings,
                   options=OPTIONS, autoscaling=autoscaling)
    result = sim_result(sim, workload, {}, SLO_TARGET)
    stats = result["sim"].get("autoscaling")
    gpu_hours = stats["gpu_hours"] if stats else replicas * sim.simulated_s / 3600
    price = get_hardware(HARDWARE).price_per_hour_usd
    return {"replicas": replicas if stats is None else None, "policy": scaling.policy if scaling else "static",
            "target": scaling.target_ongoing_requests if scaling and scaling.policy == "target" else None,
            "gpu_hours": gpu_hours, "cost_usd": gpu_hours * price, "slo_attainment": result["slo_attainment"],
            "ttft_p99_ms": result["ttft_ms"]["p99"], "tpot_p99_ms": result["tpot_ms"]["p99"],
            "mean_replicas": stats["mean_replicas"] if stats else replicas,
            "peak_replicas": stats["peak_replicas"] if stats else replicas,
            "starts": stats["starts"] if stats else 0, "simulated_s": sim.simulated_s,
            "requests": len(workload), "cpu_s": time.process_time() - started}


def compare(workload: Workload, targets: tuple[float, ...]) -> dict:
    rows = [run(workload, 1, replace(SCALING, policy="slo"))]
    slo = rows[0]
    print(f"  slo: {slo}", flush=True)
    for target in targets:
        rows.append(run(workload, 1, replace(SCALING, policy="target", target_ongoing_requests=target)))
        print(f"  target {target:g}: {rows[-1]}", flush=True)
    # The smallest static fleet at least as good as the slo policy, by bisection over 1 to the slo run's peak
    # (attainment grows with the size); none when even the peak falls short.
    static, low, high = None, 0, slo["peak_replicas"]
    size = high
    while True:
        row = run(workload, size, None)
        rows.append(row)
        print(f"  static {size}: {row}", flush=True)
        if row["slo_attainment"] >= slo["slo_attainment"]:
            static, high = row, size
        elif size == high:
            break
        else:
            low = size
        if high - low <= 1:
            break
        size = (low + high) // 2
    rows.sort(key=lambda row: (row["policy"] != "slo", row["policy"] != "target", row["target"] or 0,
                               row["replicas"] or 0))
    return summarize(workload.source, len(workload), rows, static)


def summarize(source: str, requests: int, rows: list[dict], static: dict | None) -> dict:
    """The target peer is the target run closest below or at the slo run's attainment (the slo policy at equal
    or better attainment); the static one the smallest static fleet at or above it."""
    slo = next(row for row in rows if row["policy"] == "slo")
    peers = [row for row in rows if row["policy"] == "target" and row["slo_attainment"] <= slo["slo_attainment"]]
    target = max(peers, key=lambda row: row["slo_attainment"]) if peers else None
    return {"workload": source, "requests": requests, "rows": rows, "slo": slo, "target": target, "static": static,
            "saving_vs_target": 1 - slo["gpu_hours"] / target["gpu_hours"] if target else None,
            "saving_vs_static": 1 - slo["gpu_hours"] / static["gpu_hours"] if static else None}


def table(results: dict[str, dict]) -> str:
    lines = ["| workload | fleet | GPU-hours | cost | SLO attainment | TTFT p99 (ms) | TPOT p99 (ms) | mean / peak "
             "replicas | starts |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        for row in result["rows"]:
            fleet = (f"static {row['replicas']}" if row["policy"] == "static" else
                     f"target {row['target']:g}" if row["policy"] == "target" else "slo")
            lines.append(f"| {name} | {fleet} | {row['gpu_hours']:.2f} | ${row['cost_usd']:.2f} | "
                         f"{row['slo_attainment']:.1%} | {row['ttft_p99_ms']:,.0f} | {row['tpot_p99_ms']:.1f} | "
                         f"{row['mean_replicas']:.2f} / {row['peak_replicas']} | {row['starts']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autoscaling"))
    parser.add_argument("--workloads", default="day,bursty")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    args = parser.parse_args()
    builders = {"day": azure_day, "bursty": bursty}
    targets = tuple(float(t) for t in args.targets.split(","))
    results = {}
    for name in args.workloads.split(","):
        workload = builders[name]()
        print(f"{name}: {len(workload)} requests over {workload.duration_s:,.0f} s", flush=True)
        results[name] = compare(workload, targets)
        result = results[name]
        print(f"{name}: slo saves {result['saving_vs_target']} against target, {result['saving_vs_static']} "
              f"against static", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (out / "table.md").write_text(table(results), encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
