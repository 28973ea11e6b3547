"""What a benchmark run looked like: summary tables (split by service class and by priority when the run
mixes them), PNG plots, and runs compared side by side.

Plots (written with matplotlib's Agg canvas, without pyplot, so nothing global changes):
- `latency_cdf.png`: the CDFs of TTFT, TPOT, ITL and E2E over completed requests.
- `timeline.png`: over the run, output tokens/s (1 s bins, or wider/narrower ones for long/short runs),
  requests in flight, and each request's TTFT and E2E at its send time (failures marked on the axis).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from fleetserve.bench.metrics import RequestRecord, e2e, itl, tpot, ttft
from fleetserve.engine.sampling_params import SERVICE_CLASSES

LATENCY_KEYS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
LATENCY_LABELS = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E",
                  "send_lag_ms": "send lag"}
_NICE_BIN_WIDTHS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
_TARGET_BINS = 60


# --- summary ----------------------------------------------------------------------------------------

def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def summary_tables(summary: dict[str, Any], title: str = "benchmark") -> list[Table]:
    """Two tables: counts and throughputs, then latency distributions (ms)."""
    overview = Table(title=title, show_header=False)
    overview.add_column("metric")
    overview.add_column("value", justify="right")
    failures = ", ".join(f"{kind}: {count}" for kind, count in summary["failures_by_kind"].items())
    rows = [("requests sent", summary["num_requests"]), ("completed", summary["completed"]),
            ("failed", f"{summary['failed']}" + (f" ({failures})" if failures else "")),
            ("duration (s)", summary["duration_s"]),
            ("input tokens", summary["total_input_tokens"]), ("output tokens", summary["total_output_tokens"]),
            ("request throughput (req/s)", summary["request_throughput"]),
            ("output token throughput (tok/s)", summary["output_token_throughput"]),
            ("total token throughput (tok/s)", summary["total_token_throughput"])]
    if summary.get("slo") is not None:
        slo = ", ".join(f"{key.removesuffix('_ms')} <= {value:g} ms" for key, value in summary["slo"].items()
                        if value is not None)
        attainment = summary["slo_attainment"]
        rows += [("SLO", slo), ("met SLO", summary["slo_met"]), ("goodput (req/s)", summary["goodput"]),
                 ("SLO attainment", None if attainment is None else f"{attainment:.1%}")]
    for label, value in rows:
        overview.add_row(label, value if isinstance(value, str) else _number(value))

    latency = Table(title="latency (ms)")
    columns = ("count", "mean", "p50", "p90", "p99", "max")
    latency.add_column("metric")
    for column in columns:
        latency.add_column(column, justify="right")
    for key in (*LATENCY_KEYS, "send_lag_ms"):
        stats = summary[key]
        latency.add_row(LATENCY_LABELS[key], *(_number(stats[column]) for column in columns))
    tables = [overview, latency]
    for key, heading, label in (("by_class", "by service class", ""), ("by_priority", "by priority (lower runs first)",
                                                                    "priority")):
        if summary.get(key):
            tables.append(breakdown_table(summary[key], heading, label))
    return tables


_BREAKDOWN_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("requests sent", "num_requests", None), ("completed", "completed", None), ("failed", "failed", None),
    ("request throughput (req/s)", "request_throughput", None),
    ("output token throughput (tok/s)", "output_token_throughput", None),
    ("TTFT p50 (ms)", "ttft_ms", "p50"), ("TTFT p99 (ms)", "ttft_ms", "p99"),
    ("TPOT p50 (ms)", "tpot_ms", "p50"), ("TPOT p99 (ms)", "tpot_ms", "p99"),
    ("E2E mean (ms)", "e2e_ms", "mean"), ("E2E p99 (ms)", "e2e_ms", "p99"),
    ("goodput (req/s)", "goodput", None), ("SLO attainment", "slo_attainment", None),
)


def breakdown_table(groups: dict[str, dict[str, Any]], title: str, label: str) -> Table:
    """A summary's `by_class` or `by_priority`: one column per group (a service class or a priority)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in groups:
        table.add_column(f"{label} {name}".strip(), justify="right")
    for heading, key, stat in _BREAKDOWN_ROWS:
        if key in ("goodput", "slo_attainment") and all(group["slo"] is None for group in groups.values()):
            continue
        values = [group[key][stat] if stat else group[key] for group in groups.values()]
        table.add_row(heading, *(f"{value:.1%}" if key == "slo_attainment" and value is not None else _number(value)
                                 for value in values))
    return table


def print_summary(summary: dict[str, Any], title: str = "benchmark", console: Console | None = None) -> None:
    console = console or Console()
    for table in summary_tables(summary, title):
        console.print(table)


# --- plots ------------------------------------------------------------------------------------------

def bin_width_s(span_s: float) -> float:
    """1 s bins for runs of 10 s to 5 min; otherwise a round width giving about 60 bins."""
    if 10 <= span_s <= 300:
        return 1.0
    wanted = max(span_s, 1e-9) / _TARGET_BINS
    return next((width for width in _NICE_BIN_WIDTHS_S if width >= wanted), _NICE_BIN_WIDTHS_S[-1])


def throughput_series(records: list[RequestRecord], width_s: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """(bin starts, output tokens/s per bin, bin width) over completed requests.

    Each token event weighs output_tokens / events, so the bins add up to the reported token count even
    when a server packs several tokens into one chunk.
    """
    times: list[float] = []
    weights: list[float] = []
    for record in records:
        if record.success and record.token_times_s:
            times += record.token_times_s
            weights += [record.output_tokens / len(record.token_times_s)] * len(record.token_times_s)
    starts = [min(record.arrival_s, record.sent_s) for record in records]
    if not times or not starts:
        return np.zeros(0), np.zeros(0), width_s or 1.0
    origin, last = min(starts), max(times)
    width = width_s or bin_width_s(last - origin)
    count = max(1, math.ceil((last - origin) / width + 1e-9))
    edges = origin + width * np.arange(count + 1)
    tokens, _ = np.histogram(times, bins=edges, weights=weights)
    return edges[:-1], tokens / width, width


def in_flight_series(records: list[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests in flight from each time on): +1 at send, -1 at the end (or failure)."""
    events = sorted([(record.sent_s, 1) for record in records]
                    + [(record.end_s if record.end_s is not None else record.sent_s, -1) for record in records])
    if not events:
        return np.zeros(0), np.zeros(0)
    times = np.array([time for time, _ in events])
    counts = np.cumsum([change for _, change in events])
    return times, counts


def _latency_samples_ms(records: list[RequestRecord]) -> dict[str, list[float]]:
    completed = [record for record in records if record.success]
    per_request = {"ttft_ms": ttft, "tpot_ms": tpot, "e2e_ms": e2e}
    samples = {key: [value * 1000 for record in completed if (value := metric(record)) is not None]
               for key, metric in per_request.items()}
    samples["itl_ms"] = [gap * 1000 for record in completed for gap in itl(record)]
    return samples


def latency_cdf_figure(records: list[RequestRecord], title: str) -> Any:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(10, 7), layout="constrained")
    figure.suptitle(f"{title}: latency CDFs over completed requests")
    samples = _latency_samples_ms(records)
    for index, key in enumerate(LATENCY_KEYS):
        axes = figure.add_subplot(2, 2, index + 1)
        values = np.sort(np.asarray(samples[key], dtype=float))
        axes.set_title(LATENCY_LABELS[key])
        axes.set_xlabel("ms")
        axes.set_ylabel("fraction of samples")
        axes.grid(alpha=0.3)
        if values.size == 0:
            axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
            continue
        axes.step(values, np.arange(1, values.size + 1) / values.size, where="post")
        for percentile, style in ((50, ":"), (99, "--")):
            axes.axvline(np.percentile(values, percentile), color="grey", linestyle=style,
                         label=f"p{percentile} {np.percentile(values, percentile):.1f} ms")
        axes.set_ylim(0, 1.02)
        axes.legend(loc="lower right", fontsize="small")
    return figure


def timeline_figure(records: list[RequestRecord], title: str) -> Any:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(10, 9), layout="constrained")
    figure.suptitle(f"{title}: over the run")
    throughput_axes = figure.add_subplot(3, 1, 1)
    flight_axes = figure.add_subplot(3, 1, 2, sharex=throughput_axes)
    latency_axes = figure.add_subplot(3, 1, 3, sharex=throughput_axes)

    starts, rates, width = throughput_series(records)
    if starts.size:
        throughput_axes.bar(starts, rates, width=width, align="edge", color="tab:blue")
    throughput_axes.set_ylabel(f"output tok/s ({width:g} s bins)")

    times, counts = in_flight_series(records)
    if times.size:
        flight_axes.step(times, counts, where="post", color="tab:purple")
    flight_axes.set_ylabel("requests in flight")

    completed = [record for record in records if record.success]
    for metric, label, marker in ((ttft, "TTFT", "o"), (e2e, "E2E", ".")):
        points = [(record.sent_s, value * 1000) for record in completed if (value := metric(record)) is not None]
        if points:
            sent, latency = zip(*points)
            latency_axes.scatter(sent, latency, s=10, marker=marker, label=label, alpha=0.7)
    failed = [record.sent_s for record in records if not record.success]
    if failed:
        latency_axes.scatter(failed, [0] * len(failed), marker="x", color="red", label="failed", zorder=3)
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_xlabel("seconds since the replay began (send time)")
    if completed or failed:
        latency_axes.legend(loc="upper left", fontsize="small")
    for axes in (throughput_axes, flight_axes, latency_axes):
        axes.grid(alpha=0.3)
    return figure


def write_plots(records: list[RequestRecord], out_dir: str | Path, title: str = "benchmark") -> list[Path]:
    """Write latency_cdf.png and timeline.png into `out_dir` (created if missing); returns their paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in (("latency_cdf.png", latency_cdf_figure), ("timeline.png", timeline_figure)):
        path = folder / name
        build(records, title).savefig(path, dpi=100)
        written.append(path)
    return written


# --- comparison -------------------------------------------------------------------------------------

# (key path in the result JSON, higher is better)
COMPARE_KEYS: tuple[tuple[str, bool], ...] = (
    ("request_throughput", True), ("output_token_throughput", True),
    *((f"{metric}.{stat}", False) for metric in LATENCY_KEYS for stat in ("mean", "p50", "p90", "p99")),
    ("goodput", True), ("slo_attainment", True),
)


@dataclass
class ComparisonRow:
    key: str
    higher_is_better: bool
    values: list[float | None]
    ratios: list[float | None]  # each run's value over the first run's


def load_result(path: str | Path) -> dict[str, Any]:
    """A result JSON written by `fleetserve bench serve --json`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"benchmark result not found: {path}")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a JSON benchmark result ({error})") from None
    if not isinstance(result, dict) or "request_throughput" not in result or "ttft_ms" not in result:
        found = sorted(result)[:12] if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{path}: not a `fleetserve bench serve --json` result; found keys {found}")
    return result


def _lookup(result: dict[str, Any], key: str) -> float | None:
    value: Any = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


# Compared per service class too when any run has a class breakdown.
CLASS_COMPARE_KEYS: tuple[tuple[str, bool], ...] = (
    ("request_throughput", True), ("output_token_throughput", True), ("ttft_ms.p99", False),
    ("tpot_ms.p99", False), ("e2e_ms.mean", False), ("goodput", True), ("slo_attainment", True),
)


def comparison_rows(results: list[dict[str, Any]]) -> list[ComparisonRow]:
    keys = list(COMPARE_KEYS)
    classes = [name for name in SERVICE_CLASSES if any(name in (result.get("by_class") or {})
                                                               for result in results)]
    keys += [(f"by_class.{name}.{key}", higher) for name in classes for key, higher in CLASS_COMPARE_KEYS]
    rows = []
    for key, higher_is_better in keys:
        values = [_lookup(result, key) for result in results]
        base = values[0] if values else None
        ratios = [value / base if value is not None and base not in (None, 0) else None for value in values]
        rows.append(ComparisonRow(key, higher_is_better, values, ratios))
    return rows


def run_name(result: dict[str, Any], path: str | Path) -> str:
    return (result.get("config") or {}).get("label") or Path(path).stem


def _ratio_text(ratio: float | None, higher_is_better: bool) -> str:
    if ratio is None:
        return "-"
    better = ratio > 1 if higher_is_better else ratio < 1
    colour = "green" if better else ("red" if ratio != 1 else "white")
    return f"[{colour}]{ratio:.2f}x[/{colour}]"


def comparison_table(results: list[dict[str, Any]], names: list[str]) -> Table:
    table = Table(title=f"compared against {names[0]}")
    table.add_column("metric")
    for index, name in enumerate(names):
        table.add_column(name, justify="right")
        if index:
            table.add_column("ratio", justify="right")
    for row in comparison_rows(results):
        cells = [_number(row.values[0])]
        for value, ratio in zip(row.values[1:], row.ratios[1:]):
            cells += [_number(value), _ratio_text(ratio, row.higher_is_better)]
        table.add_row(row.key, *cells)
    return table


def compare(paths: list[str | Path]) -> Table:
    """The runs in `paths` side by side, with each run's ratio to the first run."""
    if not paths:
        raise ValueError("compare needs at least one result JSON")
    results = [load_result(path) for path in paths]
    return comparison_table(results, [run_name(result, path) for result, path in zip(results, paths)])
