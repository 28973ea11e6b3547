"""Disaggregated prefill live on this machine: two 1-thread replicas of the default model behind the router.

    .venv/bin/python benchmarks/disaggregation_live.py [--out benchmarks/results/disaggregation_live]

(a) Transfer: `serve --replicas 2 --roles prefill,decode --disaggregation always`; requests with random-token
    prompts of --transfer-lengths tokens go prefill -> KV transfer -> decode. The decode replica's own
    /metrics time each fetch (HTTP GET of the payload, CRC check, into tensors; the write into its paged
    cache happens on the engine thread and is not in it) and count the bytes and imported tokens.
(b) Replay: the same synthetic load (--load, through `fleetserve bench serve`) against two mixed replicas,
    against prefill+decode with `--disaggregation always`, and with `conditional`; TTFT and TPOT side by side.

Each fleet starts fresh (cold caches); the exact commands are stored in OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENGINE = ["--kv-cache-memory-per-replica", "512MiB", "--max-num-batched-tokens", "512", "--no-access-log",
          "--shutdown-timeout", "2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(url: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            samples[key] = samples.get(key, 0.0) + float(value)
    return samples


class Fleet:
    def __init__(self, log: Path, extra: list[str]) -> None:
        self.port, self.base = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.replica_urls = [f"http://127.0.0.1:{self.base + i}" for i in range(2)]
        self.argv = [PYTHON, "-m", "fleetserve.cli", "serve", "--replicas", "2", "--threads", "2", "--port",
                     str(self.port), "--replica-base-port", str(self.base), *ENGINE, *extra]
        self.log = open(log, "wb")
        self.process = subprocess.Popen(self.argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the fleet exited with {self.process.returncode}; see {log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json().get("healthy_replicas") == 2:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the fleet was not ready; see {log}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def part_transfer(args: argparse.Namespace) -> dict:
    fleet = Fleet(args.out / "transfer.log", ["--roles", "prefill,decode", "--disaggregation", "always"])
    rng = random.Random(0)
    rows = []
    try:
        decode_url = fleet.replica_urls[1]
        for length in args.transfer_lengths:
            before = metrics(decode_url)
            for _ in range(args.transfer_requests):
                prompt = [rng.randrange(1000, 40000) for _ in range(length)]
                response = httpx.post(f"{fleet.url}/v1/completions", timeout=300, json={
                    "prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True})
                response.raise_for_status()
                assert response.headers.get("x-fleetserve-replica", "").endswith(str(fleet.base + 1))
            after = metrics(decode_url)
            delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in (
                "fleetserve:kv_import_seconds_sum", "fleetserve:kv_import_seconds_count",
                "fleetserve:kv_import_bytes_total", "fleetserve:kv_imported_tokens_total")}
            imports = delta["fleetserve:kv_import_seconds_count"]
            tokens = delta["fleetserve:kv_imported_tokens_total"]
            rows.append({"prompt_tokens": length, "imports": imports, "imported_tokens": tokens,
                         "mean_fetch_ms": 1000 * delta["fleetserve:kv_import_seconds_sum"] / max(imports, 1),
                         "fetch_ms_per_1000_tokens": 1e6 * delta["fleetserve:kv_import_seconds_sum"] / max(tokens, 1),
                         "megabytes_per_request": delta["fleetserve:kv_import_bytes_total"] / max(imports, 1) / 1e6})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        fleet.stop()
    return {"command": " ".join(fleet.argv[1:]), "rows": rows}


def part_replay(args: argparse.Namespace) -> dict:
    setups = {"mixed": [],
              "always": ["--roles", "prefill,decode", "--disaggregation", "always"],
              "conditional": ["--roles", "prefill,decode", "--disaggregation", "conditional",
                              "--min-remote-prefill-tokens", str(args.min_remote_prefill_tokens)]}
    results = {}
    for name, extra in setups.items():
        fleet = Fleet(args.out / f"replay_{name}.log", extra)
        out = args.out / f"replay_{name}.json"
        bench = [PYTHON, "-m", "fleetserve.cli", "bench", "serve", "--url", fleet.url, "--synthetic", args.load,
                 "--slo", args.slo, "--label", name, "--json", str(out), "--no-progress", "--timeout", "600"]
        try:
            print("$ " + " ".join(bench[1:]), flush=True)
            subprocess.run(bench, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            remote = sum(metrics(u).get("fleetserve:kv_imports_total", 0.0) for u in fleet.replica_urls)
        finally:
            fleet.stop()
        result = json.loads(out.read_text())
        results[name] = {"fleet": " ".join(fleet.argv[1:]), "bench": " ".join(bench[1:]),
                         "completed": result["completed"], "failed": result["failed"], "kv_imports": remote,
                         "slo_attainment": result["slo_attainment"],
                         **{f"{m}_{q}_ms": result[f"{m}_ms"][q] for m in ("ttft", "tpot") for q in ("p50", "p90")}}
        print(json.dumps({name: {k: v for k, v in results[name].items() if k not in ("fleet", "bench")}}),
              flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/disaggregation_live")
    parser.add_argument("--parts", default="transfer,replay")
    parser.add_argument("--transfer-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[250, 1000, 1900])
    parser.add_argument("--transfer-requests", type=int, default=5)
    parser.add_argument("--load", default="rate=0.25,n=24,prompt=uniform:128:1536,output=fixed:48,seed=1")
    parser.add_argument("--slo", default="ttft=4000,tpot=150")
    parser.add_argument("--min-remote-prefill-tokens", type=int, default=768)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv}
    parts = args.parts.split(",")
    if "transfer" in parts:
        summary["transfer"] = part_transfer(args)
    if "replay" in parts:
        summary["replay"] = part_replay(args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
