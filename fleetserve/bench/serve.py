"""`fleetserve bench serve`: replay a trace or a synthetic workload against an OpenAI-compatible server,
and `fleetserve bench compare`: put the results of several runs side by side.

Everything that can be wrong with the input (the trace, the SLO or synthetic spec, the flags, the output
paths, the server URL, the tokenizer) is checked before the first request is sent, and raises a
ValueError naming the offending value; the CLI prints it as a one-line error and exits with code 2.

For programs (the router and simulator benchmarks): `replay` (async) sends a workload and returns the
records, `build_result` turns records into the result dict, and `run_benchmark` does both synchronously.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from fleetserve.bench.client import ClientOptions, replay, resolve_model_name
from fleetserve.bench.metrics import SLO, RequestRecord, parse_slo, summarize
from fleetserve.bench.report import compare, print_summary, write_plots
from fleetserve.commands.service_class_arguments import apply_service_classes, service_class_config
from fleetserve.workload.spec import Workload
from fleetserve.workload.synthetic import arrival_times, parse_synthetic_spec, synthetic_workload
from fleetserve.workload.traces import read_trace, synthesize_prompts

__all__ = ["build_result", "load_tokenizer", "load_workload", "read_request_log", "replay", "run",
           "run_benchmark", "run_compare", "shape_workload", "write_request_log"]

# Spec fields that are big and reproducible from the seed, so the request log leaves them out.
_LOG_OMITS = ("prompt", "prompt_token_ids", "request_id", "arrival_s")


class BenchArgumentError(ValueError):
    """Flags that contradict each other or leave the run undefined."""


def load_workload(trace: str | None, synthetic: str | None, trace_kind: str | None = None,
                  seed: int = 0) -> Workload:
    """The workload from a trace file or a synthetic spec ("rate=4,n=100,prompt=uniform:64:512")."""
    if (trace is None) == (synthetic is None):
        raise BenchArgumentError(f"give exactly one of --trace and --synthetic (got trace={trace!r}, "
                                 f"synthetic={synthetic!r})")
    if trace is not None:
        return read_trace(trace, trace_kind)
    kwargs = parse_synthetic_spec(synthetic or "")
    kwargs.setdefault("seed", seed)
    return synthetic_workload(**kwargs)


def retimed_poisson(workload: Workload, rate: float, seed: int) -> Workload:
    """The same requests in the same order with Poisson arrivals at `rate` requests per second."""
    times = arrival_times(len(workload), rate, "poisson", 1.0, np.random.default_rng(seed))
    requests = [dataclasses.replace(spec, arrival_s=time) for spec, time in zip(workload, times)]
    return Workload(requests, workload.name, workload.source,
                    [*workload.transforms, f"re-timed as Poisson arrivals at {rate:g} req/s (seed {seed})"])


def shape_workload(workload: Workload, *, num_requests: int | None = None, scale_lengths: float | None = None,
                   max_prompt_tokens: int | None = None, max_output_tokens: int | None = None,
                   speedup: float | None = None, rate: float | None = None, duration_s: float | None = None,
                   seed: int = 0) -> Workload:
    """Take the first N, scale and cap lengths, then compress time (speedup) or re-time (rate), then keep
    the arrivals within the duration; every step is recorded in the workload's `transforms`."""
    if speedup is not None and rate is not None:
        raise BenchArgumentError(f"give --speedup ({speedup:g}) or --rate ({rate:g}), not both: "
                                 f"--rate replaces the trace's arrival times")
    if num_requests is not None:
        if num_requests < 1:
            raise BenchArgumentError(f"--num-requests must be >= 1, got {num_requests}")
        workload = workload.head(num_requests)
    if scale_lengths is not None:
        workload = workload.scale_lengths(scale_lengths)
    if max_prompt_tokens is not None or max_output_tokens is not None:
        workload = workload.cap_lengths(max_prompt_tokens, max_output_tokens)
    if rate is not None:
        workload = retimed_poisson(workload, rate, seed)
    elif speedup is not None:
        workload = workload.scaled(speedup)
    if duration_s is not None:
        workload = workload.window(duration_s)
    if not len(workload):
        raise BenchArgumentError(f"no requests left to send after {workload.transforms}")
    return workload


def load_tokenizer(name: str = "default") -> Any:
    """fleetserve's default model tokenizer, or the one in a folder holding tokenizer.json."""
    from fleetserve.model.tokenizer import Tokenizer
    if name in ("", "default"):
        from fleetserve.model.loader import resolve_model
        return Tokenizer(resolve_model(None))
    path = Path(name).expanduser()
    folder = path.parent if path.name == "tokenizer.json" else path
    if not (folder / "tokenizer.json").is_file():
        raise BenchArgumentError(f"--tokenizer {name!r}: no tokenizer.json in {folder}; pass a model folder "
                                 f"that has one, or 'default'")
    return Tokenizer(folder)


def _prepare_output(path: str | None, is_dir: bool) -> None:
    if path is None:
        return
    target = Path(path)
    try:
        (target if is_dir else target.parent).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchArgumentError(f"cannot create the folder for output {path!r}: {error}") from None
    if is_dir and not target.is_dir():
        raise BenchArgumentError(f"output folder {path!r} is a file, not a folder")
    if not is_dir and target.is_dir():
        raise BenchArgumentError(f"output {path!r} is a folder, not a file path")


def build_result(records: list[RequestRecord], workload: Workload, config: dict[str, Any],
                 slo: SLO | None = None) -> dict[str, Any]:
    """The summary of `metrics.summarize` (its duration: first arrival to last end, so the summary can be
    recomputed from the request log alone) plus `config`, the `workload` description and `not_sent`."""
    summary = summarize(records, None, slo)
    return {**summary, "not_sent": len(workload) - len(records),
            "config": {**config, "transforms": list(workload.transforms)}, "workload": workload.describe()}


def run_benchmark(url: str, workload: Workload, options: ClientOptions | None = None, slo: SLO | None = None,
                  config: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Replay `workload` (prompts already synthesized) against `url` and return the result dict.

    Synchronous (runs its own event loop); inside a running loop await `replay` and call `build_result`.
    """
    options = options or ClientOptions()
    records = asyncio.run(replay(url, workload, options, progress=progress))
    base_config = {"url": url, "model": options.model, "endpoint": options.endpoint,
                   "max_concurrency": options.max_concurrency, "ignore_eos": options.ignore_eos,
                   "timeout_s": options.timeout_s, "duration_s": options.stop_after_s}
    return build_result(records, workload, {**base_config, **(config or {})}, slo)


def write_request_log(records: list[RequestRecord], workload: Workload, path: str | Path) -> None:
    """One JSON line per sent request: the record's fields and, under "spec", the request spec's
    fields but the prompt itself (reproducible from the seed)."""
    specs = {spec.request_id: spec for spec in workload}
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            spec = specs[record.request_id].to_jsonable()
            line = {**record.to_jsonable(),
                    "spec": {key: value for key, value in spec.items() if key not in _LOG_OMITS}}
            handle.write(json.dumps(line) + "\n")


def read_request_log(path: str | Path) -> list[RequestRecord]:
    """The records of a log written by `write_request_log`."""
    known = {field.name for field in dataclasses.fields(RequestRecord)}
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if text.strip():
                data = json.loads(text)
                unknown = set(data) - known - {"spec"}
                if unknown:
                    raise ValueError(f"{path}:{line}: unknown fields {sorted(unknown)} in a request log")
                records.append(RequestRecord(**{key: value for key, value in data.items() if key != "spec"}))
    return records


def _options(args: argparse.Namespace, model: str) -> ClientOptions:
    return ClientOptions(endpoint=args.endpoint, model=model, ignore_eos=not args.no_ignore_eos,
                         timeout_s=args.timeout, max_concurrency=args.max_concurrency,
                         stop_after_s=args.duration)


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    slo = parse_slo(args.slo) if args.slo is not None else None
    options = _options(args, model="")  # checks the numeric flags before anything is read
    for path, is_dir in ((args.json, False), (args.requests_out, False), (args.plot, True)):
        _prepare_output(path, is_dir)
    workload = shape_workload(
        load_workload(args.trace, args.synthetic, args.trace_kind, args.seed),
        num_requests=args.num_requests, scale_lengths=args.scale_lengths,
        max_prompt_tokens=args.max_prompt_tokens, max_output_tokens=args.max_output_tokens,
        speedup=args.speedup, rate=args.rate, duration_s=args.duration, seed=args.seed)
    workload = apply_service_classes(workload, args)
    model, served = asyncio.run(resolve_model_name(args.url, args.model))
    if args.model is not None and served and args.model not in served:
        print(f"warning: model {args.model!r} is not among those the server at {args.url} lists: {served}",
              file=sys.stderr)
    workload = synthesize_prompts(workload, load_tokenizer(args.tokenizer), seed=args.seed)
    options = dataclasses.replace(options, model=model)

    console.print(f"replaying {len(workload)} requests of {workload.name} over {workload.duration_s:.1f} s "
                  f"to {args.url} (model {model})")
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = asyncio.run(replay(args.url, workload, options, progress=not args.no_progress))
    config = {"url": args.url, "model": model, "endpoint": args.endpoint, "label": args.label,
              "trace": args.trace, "trace_kind": args.trace_kind, "synthetic": args.synthetic,
              "speedup": args.speedup, "rate": args.rate, "max_concurrency": args.max_concurrency,
              "duration_s": args.duration, "num_requests": args.num_requests,
              "ignore_eos": options.ignore_eos, "tokenizer": args.tokenizer, "seed": args.seed,
              "timeout_s": args.timeout, "started_at": started_at,
              "requests_out": str(Path(args.requests_out).resolve()) if args.requests_out else None,
              **service_class_config(args)}
    result = build_result(records, workload, config, slo)

    print_summary(result, title=args.label or workload.name, console=console)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    if args.requests_out:
        write_request_log(records, workload, args.requests_out)
        console.print(f"wrote {args.requests_out}")
    if args.plot:
        for path in write_plots(records, args.plot, title=args.label or workload.name):
            console.print(f"wrote {path}")
    if records and not result["completed"]:
        print(f"fleetserve bench serve: every request failed: {result['failures_by_kind']}; first error: "
              f"{records[0].error}", file=sys.stderr)
        return 1
    return 0


def run_compare(args: argparse.Namespace) -> int:
    Console().print(compare(args.results))
    return 0
