"""Simulator speed: simulated requests per second of wall time, on one core.

The Azure LLM 2023 conversation trace's requests (lengths and arrival gaps) are repeated end to end until
there are --requests of them, and time is compressed by --speedup (default: the fleet size, so each
replica sees the trace's own rate of about 5.5 requests/s). Fleet: --fleet (default h100:64) serving
Llama-3-8B (benchmarks/models/llama-3-8b.json) under the roofline model.

    .venv/bin/python benchmarks/sim_speed.py [--requests 100000] [--fleet h100:64] [--policy round_robin]
        [--max-num-batched-tokens 512] [--max-num-seqs 64] [--block-size 16] [--no-token-times] [--no-skip]
        [--prefix-view events|perfect] [--json PATH]

Reports wall time and this process's CPU time for the replay alone (building the workload and the
replicas, and summarizing, are timed apart): on a busy machine the CPU time is the better estimate of
what one idle core would take.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from fleetserve.bench.metrics import summarize
from fleetserve.fleet.policies import POLICY_NAMES, make_policy
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.build import build_replicas
from fleetserve.sim.config import PREFIX_VIEWS, ReplicaConfig, SimOptions
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload.spec import Workload
from fleetserve.workload.traces import read_trace

ROOT = Path(__file__).resolve().parent.parent
AZURE_CONV = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
LLAMA_3_8B = ROOT / "benchmarks" / "models" / "llama-3-8b.json"


def repeated_trace(trace: Workload, count: int) -> Workload:
    """The trace's requests over and over, each copy starting one mean gap after the last one ended."""
    specs = trace.requests
    period = trace.duration_s * len(specs) / max(len(specs) - 1, 1)
    requests = [dataclasses.replace(specs[i % len(specs)], request_id=f"r{i}",
                                    arrival_s=specs[i % len(specs)].arrival_s + (i // len(specs)) * period)
                for i in range(count)]
    return Workload(requests, trace.name, trace.source, [*trace.transforms, f"repeated to {count} requests"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(AZURE_CONV))
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--fleet", default="h100:64")
    parser.add_argument("--speedup", type=float, default=None, help="default: the number of replicas")
    parser.add_argument("--policy", choices=POLICY_NAMES, default="round_robin")
    parser.add_argument("--model-config", default=str(LLAMA_3_8B))
    parser.add_argument("--max-num-batched-tokens", type=int, default=ReplicaConfig.max_num_batched_tokens)
    parser.add_argument("--max-num-seqs", type=int, default=ReplicaConfig.max_num_seqs)
    parser.add_argument("--block-size", type=int, default=ReplicaConfig.block_size)
    parser.add_argument("--no-token-times", action="store_true", help="do not keep every token's time")
    parser.add_argument("--no-skip", action="store_true", help="simulate every decode step")
    parser.add_argument("--prefix-view", choices=PREFIX_VIEWS, default=SimOptions.prefix_view,
                        help="how the router learns cached prefixes (as `fleetserve sim --prefix-view`)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    fleet_spec = parse_fleet_spec(args.fleet)
    num_replicas = sum(count for _, count in fleet_spec)
    speedup = args.speedup or num_replicas
    workload = repeated_trace(read_trace(args.trace), args.requests).scaled(speedup)
    model_config = ModelConfig.from_file(args.model_config)
    perf = {hardware.name: RooflineModel(model_config, hardware) for hardware, *_ in fleet_spec}
    config = ReplicaConfig(block_size=args.block_size, max_num_batched_tokens=args.max_num_batched_tokens,
                           max_num_seqs=args.max_num_seqs)
    options = SimOptions(skip_decodes=not args.no_skip, record_token_times=not args.no_token_times,
                         prefix_view=args.prefix_view)
    replicas = build_replicas(fleet_spec, perf, config, model_config.max_position_embeddings, options)
    fleet = SimFleet(replicas, make_policy(args.policy))

    started, cpu_started = time.perf_counter(), time.process_time()
    records = fleet.run(workload)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
    summarize_started = time.perf_counter()
    summary = summarize(records)
    summarize_s = time.perf_counter() - summarize_started
    steps = sum(replica.num_steps for replica in replicas)
    full_steps = sum(replica.num_full_steps for replica in replicas)
    segments = sum(replica.num_segments for replica in replicas)
    result = {
        "requests": len(records), "fleet": args.fleet, "policy": args.policy, "speedup": speedup,
        "max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs,
        "block_size": args.block_size,
        "skip_decodes": not args.no_skip, "token_times": not args.no_token_times,
        "wall_s": wall_s, "simulated_requests_per_wall_s": len(records) / wall_s,
        # The CPU time of this process: what a run on an idle core would take as wall time.
        "cpu_s": cpu_s, "simulated_requests_per_cpu_s": len(records) / cpu_s,
        "summarize_s": summarize_s, "simulated_s": fleet.clock, "steps": steps, "full_steps": full_steps,
        "decode_segments": segments, "steps_per_segment": (steps - full_steps) / max(segments, 1),
        "mean_requests_in_flight_per_replica": sum(
            (record.end_s or record.sent_s) - record.sent_s for record in records) / fleet.clock / num_replicas,
        "completed": summary["completed"], "failed": summary["failed"],
        "failures_by_kind": summary["failures_by_kind"],
        "ttft_ms_p50": summary["ttft_ms"]["p50"], "tpot_ms_p50": summary["tpot_ms"]["p50"],
        "e2e_ms_p50": summary["e2e_ms"]["p50"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
