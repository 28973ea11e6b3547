"""Report: plots are real PNGs, the series behind them add up, and comparisons divide the right way."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from fleetserve.bench.metrics import RequestRecord, parse_slo, summarize
from fleetserve.bench.report import (
    bin_width_s,
    compare,
    comparison_rows,
    in_flight_series,
    print_summary,
    throughput_series,
    write_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records() -> list[RequestRecord]:
    """Request i is sent at i/2 s, streams 4 tokens 0.1 s apart starting 0.2 s later; one failure."""
    made = []
    for index in range(20):
        sent = index / 2
        times = [sent + 0.2 + 0.1 * step for step in range(4)]
        made.append(RequestRecord(f"r{index}", arrival_s=sent, sent_s=sent, first_token_s=times[0],
                                  token_times_s=times, end_s=times[-1], output_tokens=8, prompt_tokens=32))
    made.append(RequestRecord("bad", arrival_s=3.0, sent_s=3.0, end_s=3.5, success=False,
                              error_kind="http_status_500", error="boom"))
    return made


def assert_png(path: Path) -> None:
    from matplotlib.image import imread
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert height > 300 and width > 300


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    written = write_plots(records(), tmp_path / "plots", title="unit")
    assert [path.name for path in written] == ["latency_cdf.png", "timeline.png"]
    for path in written:
        assert_png(path)


def test_plots_survive_a_run_where_everything_failed(tmp_path: Path) -> None:
    failed = [record for record in records() if not record.success]
    for path in write_plots(failed, tmp_path):
        assert_png(path)


def test_throughput_bins_add_up_to_the_reported_output_tokens() -> None:
    starts, rates, width = throughput_series(records())
    assert width == 1.0  # the run spans ~10 s
    assert float(np.sum(rates) * width) == pytest.approx(20 * 8)  # 2 tokens per chunk, weighted in
    assert starts[0] == 0.0


@pytest.mark.parametrize("span, width", [(3.0, 0.05), (60.0, 1.0), (3600.0, 60.0)])
def test_bin_width_adapts_to_the_run_length(span: float, width: float) -> None:
    assert bin_width_s(span) == width


def test_in_flight_counts_rise_at_send_and_fall_at_end() -> None:
    sample = [RequestRecord("a", 0.0, 0.0, end_s=2.0), RequestRecord("b", 1.0, 1.0, end_s=3.0),
              RequestRecord("c", 1.5, 1.5, end_s=1.6, success=False, error_kind="timeout")]
    times, counts = in_flight_series(sample)
    assert list(times) == [0.0, 1.0, 1.5, 1.6, 2.0, 3.0]
    assert list(counts) == [1, 2, 3, 2, 1, 0]


def test_summary_table_shows_counts_failures_and_slo() -> None:
    summary = summarize(records(), slo=parse_slo("ttft=250"))
    console = Console(file=io.StringIO(), width=140)
    print_summary(summary, title="unit", console=console)
    text = console.file.getvalue()
    assert "http_status_500: 1" in text and "SLO attainment" in text and "TTFT" in text


def write_result(path: Path, label: str, throughput: float, ttft_p50: float, attainment: float | None) -> Path:
    summary = summarize(records())
    summary.update(request_throughput=throughput, slo_attainment=attainment, config={"label": label})
    summary["ttft_ms"]["p50"] = ttft_p50
    path.write_text(json.dumps(summary))
    return path


def test_compare_ratios_are_against_the_first_run(tmp_path: Path) -> None:
    base = write_result(tmp_path / "a.json", "base", 2.0, 100.0, 0.5)
    faster = write_result(tmp_path / "b.json", "faster", 3.0, 50.0, None)
    results = [json.loads(path.read_text()) for path in (base, faster)]
    rows = {row.key: row for row in comparison_rows(results)}
    assert rows["request_throughput"].values == [2.0, 3.0]
    assert rows["request_throughput"].ratios == [1.0, 1.5]
    assert rows["ttft_ms.p50"].ratios == [1.0, 0.5] and not rows["ttft_ms.p50"].higher_is_better
    assert rows["slo_attainment"].ratios == [1.0, None]
    assert rows["goodput"].values == [None, None] and rows["goodput"].ratios == [None, None]
    console = Console(file=io.StringIO(), width=160)
    console.print(compare([base, faster]))
    text = console.file.getvalue()
    assert "base" in text and "faster" in text and "1.50x" in text and "0.50x" in text


def test_compare_names_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gone.json"):
        compare([tmp_path / "gone.json"])
    foreign = tmp_path / "other.json"
    foreign.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="other.json.*hello"):
        compare([foreign])
