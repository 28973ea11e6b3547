"""Service classes and priorities: online/offline co-location and Llumnix-style priority, simulated and live.

    .venv/bin/python benchmarks/service_classes.py [--part sim|live|both]

Takes /tmp/fleetserve-cpu.lock itself (around each simulation and around the whole live part), so do not
wrap it in flock. Writes JSON under benchmarks/results/service_classes/ and prints a table.

sim (Llama-3-8B, roofline, h100:4; the Azure conversation trace as online work):
  co-location: (a) online alone at --speedup COLO_SPEEDUP, (b) online + an offline batch submitted at
  start that alone saturates the fleet (default offline limits, limits raised to 64, and opened wide),
  (c) the online requests all at once (lambda_max, requests/s at saturation), (d) the offline batch
  alone all at once (R_off). Goal 1: online SLO attainment of (b) >= 99% of (a)'s. Goal 2: offline
  completions per second during the online arrivals of (b), X, over R_off, >= 80% of the idle share
  1 - lambda_on / lambda_max.
  priority: 10% of the requests at priority -1 at --speedup PRIORITY_SPEEDUP, fcfs vs priority (aging 30 s, 5 s).
  Goal: their p99 TTFT >= 2x better; the rest's mean E2E and mean TTFT at most 5% worse.
live (one `fleetserve serve` replica of the default model, `fleetserve bench serve` against it): the same
  two comparisons on synthetic load, at a scale this CPU serves in about ten minutes; fcfs vs priority on a
  fresh server per run, in the order fcfs, priority, priority, fcfs.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "service_classes"
FLEETSERVE = str(Path(sys.executable).parent / "fleetserve")
CPU_LOCK = "/tmp/fleetserve-cpu.lock"

TRACE = str(ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv")
SIM_SLO = "ttft=2000,tpot=100"
SIM_BASE = ["--fleet", "h100:4", "--model-config", "benchmarks/models/llama-3-8b.json", "--slo", SIM_SLO,
            "--max-queue", "1000000", "--seed", "0", "--no-token-times"]
COLO_SPEEDUP = 10  # 55 requests/s, about 70% of the fleet's throughput for this mix; alone it meets the SLO
PRIORITY_SPEEDUP = 14  # about 97% of the fleet's throughput: FCFS p99 TTFT of several seconds
OFFLINE_BATCH = "rate=inf,n=20000,prompt=uniform:256:2048,output=uniform:64:512"
# Tighter limits than the defaults (64 online busy, 64 offline, offline token share 1): a busy threshold of
# 16 online requests and half the token budget, to show what each default is worth.
GATE_16 = ["--online-busy-in-flight", "16", "--offline-max-in-flight", "32"]
NAIVE_MIXING = ["--online-busy-in-flight", "1000000", "--offline-max-in-flight", "1000000",
                "--offline-token-share", "1", "--online-kv-reserve", "0"]

LIVE_SLO = "ttft=3000,tpot=300"
LIVE_ONLINE = "rate=1,n=40,prompt=uniform:64:256,output=uniform:32:96"  # about half the replica's throughput
LIVE_OFFLINE = "rate=inf,n=60,prompt=uniform:64:256,output=uniform:32:96"  # outlasts the online requests
LIVE_PRIORITY_LOAD = "rate=1.6,n=60,prompt=uniform:64:256,output=uniform:32:96"  # about 97%: queues build


@contextlib.contextmanager
def cpu_lock() -> Iterator[None]:
    with open(CPU_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_records(path: Path) -> list[dict]:
    with path.open() as lines:
        return [json.loads(line) for line in lines]


def offline_during_online(records: list[dict]) -> dict:
    """Offline completions per second while online requests arrive (first to last online arrival)."""
    online_arrivals = [r["arrival_s"] for r in records if r.get("service_class", "online") == "online"]
    start, end = min(online_arrivals), max(online_arrivals)
    done = [r for r in records if r.get("service_class") == "offline" and r["success"]
            and start <= r["end_s"] <= end]
    return {"online_span_s": end - start, "online_requests": len(online_arrivals),
            "online_offered_rate": len(online_arrivals) / (end - start),
            "offline_completed_in_span": len(done), "offline_rate_in_span": len(done) / (end - start),
            "offline_output_tokens_in_span": sum(r["output_tokens"] for r in done)}


def saturated_rate(result: dict) -> float:
    return result["completed"] / result["duration_s"]


def sim(name: str, *args: str, keep_requests: bool = False) -> dict:
    out = RESULTS / f"sim_{name}.json"
    command = [FLEETSERVE, "sim", *SIM_BASE, *args, "--json", str(out), "--label", name]
    with tempfile.TemporaryDirectory() as scratch:
        requests = Path(scratch) / "requests.jsonl"
        if keep_requests:
            command += ["--requests-out", str(requests)]
        print("$", " ".join(command), flush=True)
        with cpu_lock():
            started = time.perf_counter()
            subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            print(f"  {time.perf_counter() - started:.0f} s wall", flush=True)
        result = json.loads(out.read_text())
        if keep_requests:
            result["offline_during_online"] = offline_during_online(read_records(requests))
    return result


def colocation_figures(alone: dict, mixed: dict, online_saturated: dict, offline_saturated: dict) -> dict:
    span = mixed["offline_during_online"]
    lambda_max, r_off = saturated_rate(online_saturated), saturated_rate(offline_saturated)
    idle_share = 1 - span["online_offered_rate"] / lambda_max
    used_share = span["offline_rate_in_span"] / r_off
    online_alone, online_mixed = alone["slo_attainment"], mixed["by_class"]["online"]["slo_attainment"]
    return {"online_slo_attainment_alone": online_alone, "online_slo_attainment_mixed": online_mixed,
            "slo_ratio": online_mixed / online_alone, "goal_1_met": online_mixed >= 0.99 * online_alone,
            "lambda_on": span["online_offered_rate"], "lambda_max": lambda_max, "idle_share": idle_share,
            "R_off": r_off, "X": span["offline_rate_in_span"], "offline_share_used": used_share,
            "idle_capacity_used": used_share / idle_share, "goal_2_met": used_share / idle_share >= 0.8,
            "online_ttft_p99_ms_alone": alone["ttft_ms"]["p99"],
            "online_ttft_p99_ms_mixed": mixed["by_class"]["online"]["ttft_ms"]["p99"]}


def priority_figures(fcfs: dict, priority: dict) -> dict:
    high_fcfs, high_priority = fcfs["by_priority"]["-1"], priority["by_priority"]["-1"]
    rest_fcfs, rest_priority = fcfs["by_priority"]["0"], priority["by_priority"]["0"]
    speedup = high_fcfs["ttft_ms"]["p99"] / high_priority["ttft_ms"]["p99"]
    e2e_change = rest_priority["e2e_ms"]["mean"] / rest_fcfs["e2e_ms"]["mean"] - 1
    ttft_change = rest_priority["ttft_ms"]["mean"] / rest_fcfs["ttft_ms"]["mean"] - 1
    return {"high_requests": high_fcfs["completed"], "high_ttft_p99_ms_fcfs": high_fcfs["ttft_ms"]["p99"],
            "high_ttft_p99_ms_priority": high_priority["ttft_ms"]["p99"], "high_ttft_p99_improvement": speedup,
            "rest_e2e_mean_ms_fcfs": rest_fcfs["e2e_ms"]["mean"],
            "rest_e2e_mean_ms_priority": rest_priority["e2e_ms"]["mean"], "rest_e2e_mean_change": e2e_change,
            "rest_ttft_mean_ms_fcfs": rest_fcfs["ttft_ms"]["mean"],
            "rest_ttft_mean_ms_priority": rest_priority["ttft_ms"]["mean"], "rest_ttft_mean_change": ttft_change,
            "goal_met": speedup >= 2 and e2e_change <= 0.05 and ttft_change <= 0.05}


def part_sim() -> dict:
    online = ["--trace", TRACE]
    offline = ["--offline-synthetic", OFFLINE_BATCH, "--offline-at-start"]
    colo = ["--speedup", str(COLO_SPEEDUP)]
    alone = sim("a_online_alone", *online, *colo)
    mixed = {name: sim(f"b_{name}", *online, *colo, *offline, *limits, keep_requests=True)
             for name, limits in (("default_limits", []), ("share_half", ["--offline-token-share", "0.5"]),
                                 ("gate_16_share_half", [*GATE_16, "--offline-token-share", "0.5"]),
                                 ("naive_mixing", NAIVE_MIXING))}
    saturated = (sim("c_online_saturated", *online, "--rate", "inf"),
                 sim("d_offline_saturated", "--synthetic", OFFLINE_BATCH))
    high = ["--speedup", str(PRIORITY_SPEEDUP), "--high-priority-fraction", "0.1", "--high-priority", "-1"]
    fcfs = sim("priority_fcfs", *online, *high, "--scheduling-policy", "fcfs")
    figures = {f"colocation_{name}": colocation_figures(alone, result, *saturated) for name, result in mixed.items()}
    for aging in ("30", "5"):  # 30: the default
        priority = sim(f"priority_priority_aging{aging}", *online, *high, "--scheduling-policy", "priority",
                       "--priority-aging-s", aging)
        figures[f"priority_aging_{aging}s"] = priority_figures(fcfs, priority)
    figures["settings"] = {"colo_speedup": COLO_SPEEDUP, "priority_speedup": PRIORITY_SPEEDUP, "slo": SIM_SLO,
                           "offline_batch": OFFLINE_BATCH, "base": SIM_BASE, "gate_16": GATE_16,
                           "naive_mixing": NAIVE_MIXING}
    return figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(*args: str) -> Iterator[str]:
    port = free_port()
    command = [FLEETSERVE, "serve", "--port", str(port), "--max-num-seqs", "16", "--no-access-log",
               "--log-level", "warning", *args]
    print("$", " ".join(command), flush=True)
    process = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"fleetserve serve exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after 180 s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def preemptions(url: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:num_preemptions"):
            return float(line.split()[-1])
    return float("nan")


def bench(url: str, name: str, *args: str) -> dict:
    out = RESULTS / f"live_{name}.json"
    with tempfile.TemporaryDirectory() as scratch:
        requests = Path(scratch) / "requests.jsonl"
        command = [FLEETSERVE, "bench", "serve", "--url", url, "--slo", LIVE_SLO, "--seed", "0", "--no-progress",
                   "--json", str(out), "--requests-out", str(requests), "--label", name, *args]
        print("$", " ".join(command), flush=True)
        preempted_before = preemptions(url)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text())
        result["preemptions"] = preemptions(url) - preempted_before
        out.write_text(json.dumps(result, indent=2) + "\n")
        if "by_class" in result:
            result["offline_during_online"] = offline_during_online(read_records(requests))
    return result


def live_priority_figures(fcfs: dict, priority: dict) -> dict:
    figures = priority_figures(fcfs, priority)
    for policy, result in (("fcfs", fcfs), ("priority", priority)):
        figures[f"preemptions_{policy}"] = result["preemptions"]
        figures[f"throughput_tok_s_{policy}"] = result["output_token_throughput"]
        figures[f"tpot_mean_ms_{policy}"] = result["tpot_ms"]["mean"]
    return figures


def part_live() -> dict:
    warmup = ["--synthetic", "rate=inf,n=4,prompt=fixed:64,output=fixed:8"]
    high = ["--synthetic", LIVE_PRIORITY_LOAD, "--high-priority-fraction", "0.1", "--high-priority", "-1"]
    with cpu_lock():
        with server() as url:
            bench(url, "warmup", *warmup)
            alone = bench(url, "online_alone", "--synthetic", LIVE_ONLINE)
            mixed = bench(url, "online_offline", "--synthetic", LIVE_ONLINE, "--offline-synthetic", LIVE_OFFLINE,
                          "--offline-at-start")
            online_saturated = bench(url, "online_saturated", "--synthetic", LIVE_ONLINE, "--rate", "inf")
            offline_saturated = bench(url, "offline_saturated", "--synthetic", LIVE_OFFLINE)
        # A fresh server per run, in the order A B B A, so that the machine's drift falls on both policies
        runs: dict[str, list[dict]] = {"fcfs": [], "priority": []}
        for policy in ("fcfs", "priority", "priority", "fcfs"):
            with server("--scheduling-policy", policy) as url:
                bench(url, "warmup", *warmup)
                runs[policy].append(bench(url, f"priority_{policy}_{len(runs[policy]) + 1}", *high))
    colocation = colocation_figures(alone, mixed, online_saturated, offline_saturated)
    colocation["online_tpot_mean_ms_alone"] = alone["tpot_ms"]["mean"]
    colocation["online_tpot_mean_ms_mixed"] = mixed["by_class"]["online"]["tpot_ms"]["mean"]
    colocation["offline_completed_in_span"] = mixed["offline_during_online"]["offline_completed_in_span"]
    colocation["preemptions_mixed"] = mixed["preemptions"]
    figures = {"colocation": colocation}
    for pair, (fcfs, priority) in enumerate(zip(runs["fcfs"], runs["priority"]), start=1):
        figures[f"priority_pair_{pair}"] = live_priority_figures(fcfs, priority)
    figures["settings"] = {"slo": LIVE_SLO, "online": LIVE_ONLINE, "offline": LIVE_OFFLINE,
                           "priority_load": LIVE_PRIORITY_LOAD, "max_num_seqs": 16}
    return figures


def print_table(part: str, figures: dict) -> None:
    print(f"\n{part}")
    for section, values in figures.items():
        if section == "settings":
            continue
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"  {section:<24} {key:<32} {shown:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("sim", "live", "both"), default="both")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part, run in (("sim", part_sim), ("live", part_live)):
        if args.part in (part, "both"):
            figures = run()
            (RESULTS / f"{part}_summary.json").write_text(json.dumps(figures, indent=2) + "\n")
            print_table(part, figures)


if __name__ == "__main__":
    main()
