"""Metrics against timelines worked out by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from fleetserve.bench.metrics import (
    SLO,
    RequestRecord,
    distribution_stats,
    e2e,
    itl,
    parse_slo,
    records_from_jsonl,
    records_to_jsonl,
    summarize,
    tpot,
    ttft,
)


def streamed() -> RequestRecord:
    """Sent 0.1 s late; 4 tokens at 0.3, 0.4, 0.6, 0.7: TTFT 0.2, E2E 0.6, TPOT 0.4/3, ITL 0.1/0.2/0.1."""
    return RequestRecord("a", arrival_s=0.0, sent_s=0.1, first_token_s=0.3, token_times_s=[0.3, 0.4, 0.6, 0.7],
                         end_s=0.7, output_tokens=4, prompt_tokens=10)


def one_token() -> RequestRecord:
    """TTFT 0.5, E2E 0.5, no TPOT, no ITL."""
    return RequestRecord("b", arrival_s=1.0, sent_s=1.0, first_token_s=1.5, token_times_s=[1.5], end_s=1.5,
                         output_tokens=1, prompt_tokens=20)


def failed() -> RequestRecord:
    return RequestRecord("c", arrival_s=2.0, sent_s=2.05, end_s=3.0, success=False, error_kind="timeout",
                         error="no answer after 0.95 s")


def steady() -> RequestRecord:
    """3 tokens at 0.6, 0.8, 1.0: TTFT 0.1, E2E 0.5, TPOT 0.2, ITL 0.2/0.2."""
    return RequestRecord("d", arrival_s=0.5, sent_s=0.5, first_token_s=0.6, token_times_s=[0.6, 0.8, 1.0],
                         end_s=1.0, output_tokens=3, prompt_tokens=5)


def all_records() -> list[RequestRecord]:
    return [streamed(), one_token(), failed(), steady()]


def test_per_request_metrics() -> None:
    record = streamed()
    assert ttft(record) == pytest.approx(0.2)
    assert e2e(record) == pytest.approx(0.6)
    assert tpot(record) == pytest.approx(0.4 / 3)
    assert itl(record) == pytest.approx([0.1, 0.2, 0.1])


def test_one_token_output_has_no_tpot_or_itl() -> None:
    record = one_token()
    assert ttft(record) == pytest.approx(0.5)
    assert tpot(record) is None
    assert itl(record) == []


def test_ttft_falls_back_to_first_token_time() -> None:
    record = RequestRecord("x", arrival_s=0.0, sent_s=0.0, token_times_s=[0.25, 0.5], end_s=0.5, output_tokens=2)
    assert ttft(record) == pytest.approx(0.25)
    assert tpot(record) == pytest.approx(0.25)


def test_summary_counts_throughput_and_latency_stats() -> None:
    summary = summarize(all_records(), duration_s=4.0)
    assert (summary["num_requests"], summary["completed"], summary["failed"]) == (4, 3, 1)
    assert summary["failures_by_kind"] == {"timeout": 1}
    assert summary["total_input_tokens"] == 35 and summary["total_output_tokens"] == 8
    assert summary["request_throughput"] == pytest.approx(0.75)
    assert summary["output_token_throughput"] == pytest.approx(2.0)
    assert summary["total_token_throughput"] == pytest.approx(43 / 4)

    ttft_ms = summary["ttft_ms"]  # samples 200, 500, 100
    assert ttft_ms["count"] == 3
    assert ttft_ms["mean"] == pytest.approx(800 / 3)
    assert ttft_ms["p50"] == pytest.approx(200)
    assert ttft_ms["p90"] == pytest.approx(200 + 0.8 * 300)  # linear interpolation, as np.percentile
    assert ttft_ms["p99"] == pytest.approx(200 + 0.98 * 300)
    assert (ttft_ms["min"], ttft_ms["max"]) == pytest.approx((100, 500))

    assert summary["tpot_ms"]["count"] == 2  # the 1-token output is left out
    assert summary["tpot_ms"]["mean"] == pytest.approx((400 / 3 + 200) / 2)
    assert summary["itl_ms"]["count"] == 5
    assert summary["itl_ms"]["mean"] == pytest.approx(160)
    assert summary["itl_ms"]["p50"] == pytest.approx(200)
    assert summary["e2e_ms"]["mean"] == pytest.approx(1600 / 3)

    lag = summary["send_lag_ms"]  # 100, 0, 50, 0 over all requests, failed included
    assert lag["count"] == 4
    assert lag["mean"] == pytest.approx(37.5)
    assert lag["max"] == pytest.approx(100)
    assert summary["slo"] is None and summary["goodput"] is None and summary["slo_attainment"] is None


def test_duration_defaults_to_span_of_the_run() -> None:
    summary = summarize(all_records())
    assert summary["duration_s"] == pytest.approx(3.0)  # first arrival 0.0, failed request ends at 3.0
    assert summary["request_throughput"] == pytest.approx(1.0)


def test_goodput_and_attainment_with_ttft_and_tpot_slo() -> None:
    # a meets both, b misses TTFT (500 ms), d misses TPOT (200 ms), c failed
    summary = summarize(all_records(), duration_s=4.0, slo=SLO(ttft_ms=300, tpot_ms=150))
    assert summary["slo_met"] == 1
    assert summary["goodput"] == pytest.approx(0.25)
    assert summary["slo_attainment"] == pytest.approx(0.25)
    assert summary["slo"] == {"ttft_ms": 300, "tpot_ms": 150, "e2e_ms": None}


def test_one_token_output_meets_any_tpot_slo() -> None:
    summary = summarize(all_records(), duration_s=4.0, slo=SLO(tpot_ms=150))
    assert summary["slo_met"] == 2  # a and b
    assert summary["slo_attainment"] == pytest.approx(0.5)


def test_e2e_slo() -> None:
    summary = summarize(all_records(), duration_s=2.0, slo=SLO(e2e_ms=550))
    assert summary["slo_met"] == 2  # b and d
    assert summary["goodput"] == pytest.approx(1.0)


def test_slo_needing_a_missing_measurement_is_a_miss() -> None:
    no_first_token = RequestRecord("x", arrival_s=0.0, sent_s=0.0, end_s=1.0, output_tokens=5)
    assert not SLO(ttft_ms=5000).met_by(no_first_token)
    assert SLO(e2e_ms=5000).met_by(no_first_token)


def test_empty_inputs_give_none_stats() -> None:
    summary = summarize([], slo=SLO(ttft_ms=100))
    assert summary["completed"] == 0 and summary["duration_s"] is None
    assert summary["request_throughput"] is None
    assert summary["ttft_ms"] == {"count": 0, "mean": None, "std": None, "min": None, "p50": None,
                                  "p90": None, "p95": None, "p99": None, "max": None}
    assert summary["slo_attainment"] is None and summary["goodput"] is None
    only_failures = summarize([failed()], duration_s=1.0)
    assert only_failures["e2e_ms"]["p99"] is None and only_failures["request_throughput"] == 0.0
    assert distribution_stats([])["mean"] is None


def test_parse_slo() -> None:
    assert parse_slo("ttft=500,tpot=50,e2e=2000") == SLO(ttft_ms=500, tpot_ms=50, e2e_ms=2000)
    assert parse_slo("ttft:500 e2el:1500") == SLO(ttft_ms=500, e2e_ms=1500)  # vLLM's --goodput form


@pytest.mark.parametrize(("text", "named"), [
    ("ttft=abc", "'abc'"),
    ("ttft=500,latency=3", "'latency'"),
    ("ttft", "'ttft'"),
    ("tpot=-5", "'tpot=-5'"),
    ("ttft=1,ttft=2", "twice"),
    ("", "empty"),
])
def test_parse_slo_errors_name_the_bad_part(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_slo(text)


def test_records_jsonl_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    records_to_jsonl(all_records(), path)
    assert records_from_jsonl(path) == all_records()


def test_records_jsonl_rejects_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"request_id": "a", "arrival_s": 0, "sent_s": 0}\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:2: fields \['id'\]"):
        records_from_jsonl(path)
