"""Arguments of `fleetserve bench serve` and `fleetserve bench compare`."""
from __future__ import annotations

import argparse

from fleetserve.bench.client import ClientOptions
from fleetserve.commands.argument_types import positive as _positive
from fleetserve.commands.service_class_arguments import add_service_class_arguments
from fleetserve.workload.traces import TRACE_KINDS


def add_bench_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="OpenAI-compatible server root, e.g. http://127.0.0.1:8000")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", help="trace file: Azure or BurstGPT CSV, or Mooncake JSONL")
    source.add_argument("--synthetic", help="synthetic workload, e.g. "
                        "'rate=4,n=200,prompt=uniform:64:512,output=fixed:128' (keys: n, rate, arrival, "
                        "burstiness, prompt, output, groups, prefix, sessions, turns, think, seed)")
    p.add_argument("--trace-kind", choices=TRACE_KINDS, default=None, help="skip format detection")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--speedup", type=_positive(float), default=None,
                        help="compress the trace's time: 2 sends every request twice as early")
    timing.add_argument("--rate", type=_positive(float, allow_inf=True), default=None,
                        help="ignore the trace's times; Poisson arrivals at this many requests/s (inf: all at once)")
    p.add_argument("--max-concurrency", type=_positive(int), default=ClientOptions.max_concurrency,
                   help="cap requests in flight; the wait shows as send lag")
    p.add_argument("--duration", type=_positive(float), default=None,
                   help="stop issuing new requests after this many seconds")
    p.add_argument("--num-requests", type=_positive(int), default=None, help="take the first N requests")
    p.add_argument("--slo", default=None, help="latency SLO in ms for goodput, e.g. ttft=500,tpot=50,e2e=5000")
    p.add_argument("--scale-lengths", type=_positive(float), default=None,
                   help="multiply prompt and output lengths by this factor")
    p.add_argument("--max-prompt-tokens", type=_positive(int), default=None, help="cap prompt lengths")
    p.add_argument("--max-output-tokens", type=_positive(int), default=None, help="cap output lengths")
    p.add_argument("--endpoint", choices=("completions", "chat"), default=ClientOptions.endpoint,
                   help="/v1/completions (token ids sent as the prompt) or /v1/chat/completions (text)")
    p.add_argument("--model", default=ClientOptions.model,
                   help="model name to request (default: the first of GET /v1/models)")
    p.add_argument("--tokenizer", default="default",
                   help="tokenizer for synthesized prompts: 'default' (fleetserve's default model) or a "
                        "folder with tokenizer.json; must match the served model")
    p.add_argument("--seed", type=int, default=0, help="seed for prompts, synthetic workloads and --rate")
    p.add_argument("--timeout", type=_positive(float), default=ClientOptions.timeout_s,
                   help="seconds a request may take from send to its last token")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="omit ignore_eos from requests (outputs may then end early)")
    p.add_argument("--json", default=None, help="write the summary, config and workload here")
    p.add_argument("--requests-out", default=None, help="write one JSON line per request here")
    p.add_argument("--plot", default=None, help="write latency CDF and timeline PNGs into this folder")
    p.add_argument("--label", default=None, help="name of this run in tables, plots and comparisons")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_service_class_arguments(p)


def add_bench_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", help="result JSONs of `bench serve --json`; ratios are against the first")
