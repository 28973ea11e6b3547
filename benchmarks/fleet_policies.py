"""Routing policies side by side on a live CPU fleet, and the router's own overhead.

    .venv/bin/python benchmarks/fleet_policies.py                 # all three parts
    .venv/bin/python benchmarks/fleet_policies.py --parts a --policies round_robin,prefix

(a) Mooncake (synthetic release): goodput at a TTFT SLO and prefix-cache hit rate per policy, on
    `fleetserve serve --replicas 4`. The trace's last --mooncake-requests requests are replayed (its
    prefix reuse builds up over the hour, so the tail is where sharing is dense), with every length
    scaled by --mooncake-scale (1/32: one 512-token hash block becomes 16 tokens, one KV block of ours),
    prompts capped, and time stretched by --mooncake-speedup to fit four small CPU replicas.
(b) Azure LLM 2023 conversation trace: the cache-aware policies against least_loaded (no shared prefixes:
    they should cost nothing), first --azure-requests requests, lengths scaled by --azure-scale.
(c) Router overhead: one replica, the same load sent directly and through `fleetserve route`,
    alternating, --overhead-rounds times each.

Every fleet is started fresh per run (cold caches, same seed, so every policy sees the identical
workload); the load comes from `fleetserve bench serve`, whose exact command lines are stored with the
results in OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRACES = Path(os.environ.get("FLEETSERVE_TRACES", "/work/shared/traces"))
POLICIES = ("round_robin", "least_loaded", "session", "prefix", "two_choice")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_total(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split("{")[0].split(" ")[0] == name)


class Fleet:
    """`fleetserve serve --replicas N` (or one plain replica, or a replica plus `fleetserve route`)."""

    def __init__(self, log: Path, replicas: int, policy: str, kv_per_replica: str, extra: list[str]) -> None:
        self.port = free_port()
        self.base = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.replica_urls = [f"http://127.0.0.1:{self.base + i}" for i in range(replicas)]
        argv = [PYTHON, "-m", "fleetserve.cli", "serve", "--replicas", str(replicas), "--port", str(self.port),
                "--replica-base-port", str(self.base), "--threads", str(replicas), "--policy", policy,
                "--kv-cache-memory-per-replica", kv_per_replica, "--no-access-log", "--shutdown-timeout", "2",
                *extra]
        self.log = open(log, "wb")
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait(replicas)

    def wait(self, replicas: int, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fleet exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("healthy_replicas") == replicas:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the fleet was not ready in {timeout_s}s; see {self.log.name}")

    def prefix_counters(self) -> tuple[float, float]:
        hits = sum(metric_total(u, "vllm:prefix_cache_hits_total") for u in self.replica_urls)
        queries = sum(metric_total(u, "vllm:prefix_cache_queries_total") for u in self.replica_urls)
        return hits, queries

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def bench(url: str, out: Path, label: str, load: list[str]) -> tuple[dict, list[str]]:
    argv = [PYTHON, "-m", "fleetserve.cli", "bench", "serve", "--url", url, "--label", label, "--json", str(out),
            "--no-progress", *load]
    print("$ " + " ".join(argv[1:]), flush=True)
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text()), argv


def row(result: dict) -> dict:
    return {"completed": result["completed"], "failed": result["failed"], "goodput": result["goodput"],
            "slo_attainment": result["slo_attainment"], "request_throughput": result["request_throughput"],
            "output_token_throughput": result["output_token_throughput"],
            "ttft_p50_ms": result["ttft_ms"]["p50"], "ttft_p90_ms": result["ttft_ms"]["p90"],
            "e2e_p50_ms": result["e2e_ms"]["p50"], "send_lag_p90_ms": result["send_lag_ms"]["p90"]}


def compare_policies(args: argparse.Namespace, part: str, load: list[str], slo_ms: float) -> dict:
    results = {}
    for policy in args.policies:
        fleet = Fleet(args.out / "logs" / f"{part}_{policy}.log", args.replicas, policy, args.kv_per_replica,
                      ["--ttft-slo-ms", str(slo_ms), *args.engine_args])
        try:
            hits0, queries0 = fleet.prefix_counters()
            result, argv = bench(fleet.url, args.out / f"{part}_{policy}.json", policy, load)
            hits1, queries1 = fleet.prefix_counters()
        finally:
            fleet.stop()
        results[policy] = {**row(result), "prefix_hit_rate": (hits1 - hits0) / max(queries1 - queries0, 1),
                           "command": " ".join(argv[1:])}
        print(json.dumps({policy: {k: v for k, v in results[policy].items() if k != "command"}}), flush=True)
    return results


def part_mooncake(args: argparse.Namespace) -> dict:
    trace = args.out / f"mooncake_last{args.mooncake_requests}.jsonl"
    lines = (TRACES / "mooncake_synthetic.jsonl").read_text().splitlines()
    trace.write_text("\n".join(lines[-args.mooncake_requests:]) + "\n")
    load = ["--trace", str(trace), "--scale-lengths", str(args.mooncake_scale), "--max-prompt-tokens",
            str(args.mooncake_max_prompt), "--max-output-tokens", "16", "--speedup", str(args.mooncake_speedup),
            "--slo", f"ttft={args.mooncake_slo_ms:g}", "--timeout", "300"]
    return compare_policies(args, "mooncake", load, args.mooncake_slo_ms)


def part_azure(args: argparse.Namespace) -> dict:
    load = ["--trace", str(TRACES / "azure_llm_2023_conv.csv"), "--num-requests", str(args.azure_requests),
            "--scale-lengths", str(args.azure_scale), "--max-prompt-tokens", "512", "--max-output-tokens", "32",
            "--speedup", str(args.azure_speedup), "--slo", f"ttft={args.azure_slo_ms:g}", "--timeout", "300"]
    saved = args.policies
    args.policies = [p for p in ("least_loaded", "prefix", "two_choice") if p in saved] or saved
    try:
        return compare_policies(args, "azure", load, args.azure_slo_ms)
    finally:
        args.policies = saved


def part_overhead(args: argparse.Namespace) -> dict:
    load = ["--synthetic", f"rate=inf,n={args.overhead_requests},prompt=fixed:64,output=fixed:32",
            "--max-concurrency", "8"]
    replica_port, router_port = free_port(), free_port()
    replica_url, router_url = f"http://127.0.0.1:{replica_port}", f"http://127.0.0.1:{router_port}"
    logs = [open(args.out / "logs" / f"overhead_{part}.log", "wb") for part in ("replica", "router")]
    replica = subprocess.Popen([PYTHON, "-m", "fleetserve.cli", "serve", "--port", str(replica_port), "--threads", "1",
                                "--kv-cache-memory", args.kv_per_replica, "--no-access-log", *args.engine_args],
                               cwd=ROOT, stdout=logs[0], stderr=subprocess.STDOUT)
    router = subprocess.Popen([PYTHON, "-m", "fleetserve.cli", "route", "--backend", replica_url, "--port",
                               str(router_port), "--no-access-log"], cwd=ROOT, stdout=logs[1], stderr=subprocess.STDOUT)
    runs: dict[str, list[dict]] = {"direct": [], "router": []}
    commands = {}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{router_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or replica.poll() is not None or router.poll() is not None:
                raise RuntimeError("the overhead fleet did not start; see logs/overhead_*.log")
            time.sleep(0.5)
        bench(replica_url, args.out / "overhead_warmup.json", "warmup", load)
        for round_ in range(args.overhead_rounds):
            for name, url in (("direct", replica_url), ("router", router_url)):
                result, argv = bench(url, args.out / f"overhead_{name}_{round_}.json", name, load)
                runs[name].append(row(result))
                commands[name] = " ".join(argv[1:])
    finally:
        for process in (router, replica):
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        for log in logs:
            log.close()
    mean = {name: sum(r["output_token_throughput"] for r in rs) / len(rs) for name, rs in runs.items()}
    return {"runs": runs, "mean_output_token_throughput": mean, "router_over_direct": mean["router"] / mean["direct"],
            "commands": commands}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c", help="any of a (Mooncake), b (Azure), c (overhead)")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--kv-per-replica", default="256MiB")
    parser.add_argument("--engine-args", default="--max-num-batched-tokens 256",
                        help="extra flags for every replica")
    parser.add_argument("--mooncake-requests", type=int, default=60)
    parser.add_argument("--mooncake-scale", type=float, default=1 / 32)
    parser.add_argument("--mooncake-max-prompt", type=int, default=1024)
    parser.add_argument("--mooncake-speedup", type=float, default=0.25)
    parser.add_argument("--mooncake-slo-ms", type=float, default=5000)
    parser.add_argument("--azure-requests", type=int, default=60)
    parser.add_argument("--azure-scale", type=float, default=1 / 8)
    parser.add_argument("--azure-speedup", type=float, default=1.0)
    parser.add_argument("--azure-slo-ms", type=float, default=2000)
    parser.add_argument("--overhead-requests", type=int, default=48)
    parser.add_argument("--overhead-rounds", type=int, default=2)
    args = parser.parse_args()
    args.policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(args.policies) - set(POLICIES))
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    args.engine_args = args.engine_args.split()
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    parts = {"a": ("mooncake", part_mooncake), "b": ("azure", part_azure), "c": ("overhead", part_overhead)}
    for key in args.parts.split(","):
        name, run = parts[key.strip()]
        summary[name] = run(args)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_tables(summary)
    return 0


def print_tables(summary: dict) -> None:
    for part, baseline in (("mooncake", "round_robin"), ("azure", "least_loaded")):
        rows = summary.get(part)
        if not rows:
            continue
        base = rows.get(baseline, {}).get("goodput") or 0
        print(f"\n{part}: goodput ratio against {baseline}")
        print(f"{'policy':<14}{'goodput/s':>10}{'ratio':>7}{'SLO met':>9}{'req/s':>7}{'TTFT p50':>10}{'TTFT p90':>10}"
              f"{'prefix hits':>12}")
        for policy, r in rows.items():
            ratio = r["goodput"] / base if base else float("nan")
            print(f"{policy:<14}{r['goodput']:>10.3f}{ratio:>7.2f}{r['slo_attainment']:>9.0%}"
                  f"{r['request_throughput']:>7.2f}{r['ttft_p50_ms']:>9.0f}ms{r['ttft_p90_ms']:>8.0f}ms"
                  f"{r['prefix_hit_rate']:>12.0%}")
    overhead = summary.get("overhead")
    if overhead:
        mean = overhead["mean_output_token_throughput"]
        print(f"\noverhead: output tokens/s direct {mean['direct']:.1f}, through the router {mean['router']:.1f} "
              f"({overhead['router_over_direct']:.1%} of direct)")


if __name__ == "__main__":
    sys.exit(main())
