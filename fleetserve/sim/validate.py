"""Validation against a live run: replay the very arrivals of a `fleetserve bench serve` run on a simulated
fleet and compare the two summaries.

Inputs: the run's result JSON (`bench serve --json`) and its request log (`--requests-out`; the JSON's
`config.requests_out` names it, or pass it). Each logged request is replayed at its actual send time
with the prompt and output token counts the server reported (the spec's when a request failed live), and
the spec's shared-prefix ids, so the simulated prefix cache sees the same sharing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetserve.bench.metrics import RequestRecord, read_request_log
from fleetserve.bench.report import load_result
from fleetserve.sim.fleet import Arrival
from fleetserve.workload.spec import RequestSpec, Workload

COMPARED: tuple[tuple[str, str | None], ...] = (
    ("ttft_ms", "mean"), ("ttft_ms", "p50"), ("ttft_ms", "p90"),
    ("tpot_ms", "mean"), ("tpot_ms", "p50"), ("tpot_ms", "p90"),
    ("itl_ms", "mean"), ("e2e_ms", "mean"), ("e2e_ms", "p90"),
    ("request_throughput", None), ("output_token_throughput", None),
)


@dataclass
class LiveRun:
    result: dict[str, Any]
    records: list[RequestRecord]
    arrivals: list[Arrival]
    workload: Workload


def load_live_run(run_json: str | Path, requests_path: str | Path | None = None) -> LiveRun:
    result = load_result(run_json)
    config = result.get("config") or {}
    log = requests_path or config.get("requests_out")
    if log is None:
        raise ValueError(f"{run_json}: config.requests_out is missing, so the request log is unknown; pass the "
                         f"file `bench serve --requests-out` wrote with --requests PATH")
    log_path = Path(log)
    if not log_path.is_absolute() and not log_path.is_file():
        log_path = Path(run_json).parent / log_path
    if not log_path.is_file():
        raise ValueError(f"request log {log!r} of {run_json} not found; pass it with --requests PATH")
    records, specs = _read_log(log_path)
    if not records:
        raise ValueError(f"{log_path}: the request log is empty; the live run sent nothing to replay")
    arrivals = sorted((Arrival(spec, record.arrival_s, record.sent_s) for record, spec in zip(records, specs)),
                      key=lambda arrival: arrival.sent_s)
    workload = Workload([arrival.spec for arrival in arrivals], f"{Path(run_json).stem} (validation)",
                        str(run_json), list(config.get("transforms") or []) + ["replayed at the live send times"])
    return LiveRun(result, records, arrivals, workload)


def _read_log(path: Path) -> tuple[list[RequestRecord], list[RequestSpec]]:
    records, specs = [], []
    for record, extras in read_request_log(path, extra_fields=("spec",)):
        spec_fields = dict(extras["spec"])
        if record.prompt_tokens > 0:
            spec_fields["prompt_tokens"] = record.prompt_tokens
        if record.success and record.output_tokens > 0:
            spec_fields["output_tokens"] = record.output_tokens
        try:
            spec = RequestSpec(request_id=record.request_id, arrival_s=record.sent_s, **spec_fields)
        except TypeError as error:
            raise ValueError(f"{path}: request {record.request_id}: bad spec {extras['spec']}: {error}") from None
        records.append(record)
        specs.append(spec)
    return records, specs


def compare_summaries(live: dict[str, Any], simulated: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (metric, live, simulated, relative error = simulated / live - 1)."""
    rows = []
    for key, stat in COMPARED:
        live_value = live[key][stat] if stat else live.get(key)
        sim_value = simulated[key][stat] if stat else simulated.get(key)
        error = (sim_value / live_value - 1) if live_value and sim_value is not None else None
        rows.append({"metric": f"{key}.{stat}" if stat else key, "live": live_value, "sim": sim_value,
                     "error": error})
    return rows
