"""Stand-in profiling data so Vidur 0.0.26 runs offline, for a SPEED comparison with benchmarks/sim_speed.py.

Vidur predicts step times with random forests it trains on GPU profiling CSVs that it fetches from the
Hugging Face Hub (`snapshot_download`) at start-up; this machine cannot reach the Hub, and the data is not in
the wheel. This script writes stand-in CSVs in the layout Vidur reads, inside the Hub cache layout that
`snapshot_download` falls back to when offline (HF_HUB_OFFLINE=1), with CACHE = OUT/cache:

    CACHE/profiling_data/compute/datasets--fleetserve-standin--llama-3-8b-h100/{refs/main, snapshots/<sha>/}
        config.json {"model": "meta-llama/Llama-3-8B", "device_sku": "h100"}, mlp.csv.xz, attention.csv.xz
    CACHE/profiling_data/network/datasets--fleetserve-standin--h100-dgx/{refs/main, snapshots/<sha>/}
        config.json {"sku": "h100_dgx"}, all_reduce.csv.xz, send_recv.csv.xz

Vidur is then pointed at them with `--random_forrest_execution_time_predictor_config_cache_dir CACHE`,
`..._model_profiling_dataset fleetserve-standin/llama-3-8b-h100` and
`..._network_profiling_dataset fleetserve-standin/h100-dgx`.

The times (ms, per layer, one GPU) are per-operation rooflines with fleetserve's H100 numbers and
efficiencies (fleetserve.perf.roofline.RooflineModel): each op costs max(FLOPs / usable FLOP/s, bytes /
usable bandwidth). The roofline's fixed per-step cost and the LM head's weight read, which Vidur's layer
model has no place for, are spread over the layers in the `add` op. They are NOT Vidur's real H100
profiles: they only make Vidur form batches with step times of the right magnitude, so that its
simulation speed can be measured. The network CSVs are unused with one GPU per replica (tensor and
pipeline parallel size 1) and only satisfy the file layout.

It also writes the sim_speed workload for Vidur: `trace_replay_N.csv` (Date, Time, PromptTokenCount,
CompletionTokenCount: the same repeated, 64x compressed Azure conversation requests that sim_speed.py
replays, for Vidur's trace_replay request generator) and `lengths_N.csv` (num_prefill_tokens,
num_decode_tokens, for its synthetic generator with Poisson arrivals).

    .venv/bin/python benchmarks/vidur_standin_profiles.py generate --out OUT [--requests 1000 10000 ...]

`time` (run with Vidur's venv) runs Vidur's own main() steps with the phases timed apart: start-up
(config, building the simulator: predictor training or loading, reading the trace, generating requests),
the event loop, and writing output. Everything after `--` goes to Vidur's argument parser.

    HF_HUB_OFFLINE=1 /tmp/vidur-venv/bin/python benchmarks/vidur_standin_profiles.py time --json R.json -- ARGS...

Results and the full Vidur command line: benchmarks/results/vidur_compare.md.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import lzma
import sys
import time
from pathlib import Path

COMPUTE_REPO = "fleetserve-standin/llama-3-8b-h100"
NETWORK_REPO = "fleetserve-standin/h100-dgx"
MAX_TOKENS = 8192  # Llama-3-8B's context; the profiles cover batches and contexts up to it


def _write_snapshot(cache: Path, kind: str, repo: str, files: dict[str, list[dict]], config: dict) -> None:
    """One dataset in the Hub cache layout; `refs/main` holds the snapshot's (made-up) commit hash."""
    blobs = {name: _csv_xz(rows) for name, rows in files.items()}
    sha = hashlib.sha1(b"".join(blobs[name] for name in sorted(blobs))).hexdigest()
    root = cache / "profiling_data" / kind / f"datasets--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(sha)  # read back without stripping: no newline
    (snapshot / "config.json").write_text(json.dumps(config))
    for name, blob in blobs.items():
        (snapshot / name).write_bytes(blob)


def _csv_xz(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return lzma.compress(text.getvalue().encode())


def standin_profiles(cache: Path) -> None:
    from fleetserve.model.config import ModelConfig
    from fleetserve.perf.hardware import get_hardware
    from fleetserve.perf.model import StepShape
    from fleetserve.perf.roofline import RooflineModel

    from sim_speed import LLAMA_3_8B

    cfg = ModelConfig.from_file(str(LLAMA_3_8B))
    roofline = RooflineModel(cfg, get_hardware("h100"))
    flops_s, bytes_s = roofline.usable_flops_s, roofline.usable_bytes_s
    b = roofline.dtype_bytes
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim

    def ms(flops: float, nbytes: float) -> float:
        return 1e3 * max(flops / flops_s, nbytes / bytes_s)

    def linear(tokens: int, k: int, n: int) -> float:
        return ms(2 * tokens * k * n, b * (k * n + tokens * (k + n)))

    per_step_ms = 1e3 * roofline.step_overhead_s + ms(0, b * roofline.lm_head_params)
    kv_bytes = roofline.kv_bytes_per_token / layers  # per token per layer
    flops_per_pair = roofline.attention_flops_per_pair / layers

    def attention(pairs: float, kv_tokens: int, new_tokens: int) -> float:
        return ms(flops_per_pair * pairs, kv_bytes * kv_tokens + b * new_tokens * (2 * q_dim))

    model_cols = {"n_head": cfg.num_attention_heads, "n_kv_head": cfg.num_key_value_heads, "n_embd": h,
                  "n_expanded_embd": inter, "use_gated_mlp": True, "vocab_size": cfg.vocab_size,
                  "num_tensor_parallel_workers": 1}
    token_grid = [*range(1, 65), *range(72, 513, 8), *range(576, MAX_TOKENS + 1, 64)]
    mlp = [{**model_cols, "num_tokens": t,
            "time_stats.attn_pre_proj.median": linear(t, h, q_dim + 2 * kv_dim),
            "time_stats.attn_post_proj.median": linear(t, q_dim, h),
            "time_stats.mlp_up_proj.median": linear(t, h, 2 * inter),
            "time_stats.mlp_down_proj.median": linear(t, inter, h),
            "time_stats.mlp_act.median": ms(4 * t * inter, b * 3 * t * inter),
            "time_stats.input_layernorm.median": ms(4 * t * h, b * 2 * t * h),
            "time_stats.post_attention_layernorm.median": ms(4 * t * h, b * 2 * t * h),
            "time_stats.attn_rope.median": ms(6 * t * (q_dim + kv_dim), b * 2 * t * (q_dim + kv_dim)),
            "time_stats.add.median": ms(t * h, b * 3 * t * h) + per_step_ms / layers}
           for t in token_grid]

    attn_cols = {"n_embd": h, "n_q_head": cfg.num_attention_heads, "n_kv_head": cfg.num_key_value_heads,
                 "block_size": 16, "num_tensor_parallel_workers": 1}
    attn = []
    for chunk in [*range(32, 513, 32), *range(640, MAX_TOKENS + 1, 128)]:  # one prefill (chunk) at a time
        for cached in sorted({0, 256, 512, 1024, 2048, 3072, 4096, 6144, MAX_TOKENS - chunk}):
            if cached + chunk <= MAX_TOKENS:
                pairs = chunk * cached + chunk * (chunk + 1) / 2
                attn.append({**attn_cols, "batch_size": 1, "prefill_chunk_size": chunk, "kv_cache_size": cached,
                             "time_stats.attn_prefill.median": attention(pairs, cached + chunk, chunk),
                             "time_stats.attn_decode.median": 0.0,
                             "time_stats.attn_kv_cache_save.median": ms(0, 2 * b * chunk * kv_dim)})
    for batch in (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128):  # decodes, per-request context
        for context in range(256, MAX_TOKENS + 1, 256):
            attn.append({**attn_cols, "batch_size": batch, "prefill_chunk_size": 0, "kv_cache_size": context,
                         "time_stats.attn_prefill.median": 0.0,
                         "time_stats.attn_decode.median": attention(batch * context, batch * context, batch),
                         "time_stats.attn_kv_cache_save.median": ms(0, 2 * b * batch * kv_dim)})

    sizes = [2 * h * t for t in (1, 8, 64, 512, 4096, MAX_TOKENS)]  # unused with one GPU per replica
    all_reduce = [{"size": s, "num_workers": w, "devices_per_node": w, "collective": "all_reduce",
                   "time_stats.all_reduce.median": 0.01 + 1e3 * 2 * (w - 1) / w * s / 450e9}
                  for w in (1, 2, 4, 8) for s in sizes]
    send_recv = [{"size": s, "num_workers": 2, "devices_per_node": d, "collective": "send_recv",
                  "time_stats.send_recv.median": 0.01 + 1e3 * s / (450e9 if d == 2 else 50e9)}
                 for d in (1, 2) for s in sizes]

    _write_snapshot(cache, "compute", COMPUTE_REPO, {"mlp.csv.xz": mlp, "attention.csv.xz": attn},
                    {"model": "meta-llama/Llama-3-8B", "device_sku": "h100",
                     "note": "fleetserve stand-in (roofline), not measured"})
    _write_snapshot(cache, "network", NETWORK_REPO,
                    {"all_reduce.csv.xz": all_reduce, "send_recv.csv.xz": send_recv},
                    {"sku": "h100_dgx", "note": "fleetserve stand-in, not measured"})
    print(f"wrote {len(mlp)} mlp rows, {len(attn)} attention rows under {cache}/profiling_data")

    # How a whole step adds up under Vidur's layer model with these times, beside RooflineModel.step_time.
    def vidur_step(prefill: list[tuple[int, int]], decodes: int, context: int) -> float:
        tokens = sum(chunk for _, chunk in prefill) + decodes
        row = next(r for r in mlp if r["num_tokens"] >= tokens)
        layer = sum(v for k, v in row.items() if k.startswith("time_stats."))
        layer += sum(attention(c * k + c * (c + 1) / 2, k + c, c) for k, c in prefill)
        if decodes:
            layer += attention(decodes * context, decodes * context, decodes) * (1.1 if decodes > 1 else 1)
        return layers * layer

    print("step (ms)                      stand-in  roofline")
    for label, prefill, decodes, context in (("decode 1 @ 1k", [], 1, 1024), ("decode 32 @ 1k", [], 32, 1024),
                                             ("decode 64 @ 2k", [], 64, 2048), ("prefill 512", [(0, 512)], 0, 0),
                                             ("prefill 2048", [(0, 2048)], 0, 0),
                                             ("prefill 8192", [(0, 8192)], 0, 0),
                                             ("chunk 480 @ 1k + 32 dec @ 1k", [(1024, 480)], 32, 1024)):
        new = sum(c for _, c in prefill)
        shape = StepShape(new, decodes, sum(k + c for k, c in prefill) + decodes * (context + 1), len(prefill))
        print(f"{label:30s} {vidur_step(prefill, decodes, context):8.2f}  {1e3 * roofline.step_time(shape):8.2f}")


def workload_csvs(out: Path, counts: list[int]) -> None:
    from fleetserve.workload.traces import read_trace

    from sim_speed import AZURE_CONV, repeated_trace

    trace = read_trace(AZURE_CONV)
    for count in counts:
        workload = repeated_trace(trace, count).scaled(64)
        with open(out / f"trace_replay_{count}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
            writer.writerows(("2023-11-16", repr(r.arrival_s), r.prompt_tokens, r.output_tokens)
                             for r in workload.requests)
        with open(out / f"lengths_{count}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["num_prefill_tokens", "num_decode_tokens"])
            writer.writerows((r.prompt_tokens, r.output_tokens) for r in workload.requests)
        rate = (len(workload.requests) - 1) / workload.requests[-1].arrival_s
        print(f"{count} requests: mean rate {rate:.1f} req/s -> {out}/trace_replay_{count}.csv, lengths_{count}.csv")


def time_vidur(json_path: str | None, vidur_args: list[str]) -> None:
    from vidur.config import SimulationConfig
    from vidur.entities import Batch
    from vidur.execution_time_predictor import ExecutionTimePredictorRegistry
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds

    phases: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    ExecutionTimePredictorRegistry.get = timed("predictor_s", ExecutionTimePredictorRegistry.get)
    Simulator._init_event_queue = timed("generate_requests_s", Simulator._init_event_queue)
    Simulator._write_output = timed("write_output_s", Simulator._write_output)

    t0, c0 = time.perf_counter(), time.process_time()
    sys.argv = ["vidur.main", *vidur_args]
    config = SimulationConfig.create_from_cli_args()  # as vidur.main.main()
    set_seeds(config.seed)
    simulator = Simulator(config)
    requests = len(simulator._event_queue)  # one arrival event per request
    t1, c1 = time.perf_counter(), time.process_time()
    simulator.run()  # asserts at the end that every request finished
    t2, c2 = time.perf_counter(), time.process_time()

    loop_s = t2 - t1 - phases.get("write_output_s", 0.0)
    result = {"requests": requests, "startup_wall_s": t1 - t0, "startup_cpu_s": c1 - c0, **phases,
              "run_wall_s": t2 - t1, "run_cpu_s": c2 - c1, "loop_wall_s": loop_s,
              "simulated_requests_per_loop_wall_s": requests / loop_s,
              "total_wall_s": t2 - t0, "simulated_requests_per_total_wall_s": requests / (t2 - t0),
              "simulated_s": simulator._time,
              "batches": Batch._id + 1,  # ids count up from 0, one per batch (engine step) formed
              "vidur_args": vidur_args}
    print(json.dumps(result, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--out", required=True, help="folder for the workload CSVs; profiles go to OUT/cache")
    gen.add_argument("--requests", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    timer = sub.add_parser("time")
    timer.add_argument("--json", default=None)
    timer.add_argument("vidur_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "generate":
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # for sim_speed's workload and model paths
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        standin_profiles(out / "cache")
        workload_csvs(out, args.requests)
    else:
        time_vidur(args.json, args.vidur_args[1:] if args.vidur_args[:1] == ["--"] else args.vidur_args)


if __name__ == "__main__":
    main()
