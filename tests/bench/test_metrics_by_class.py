"""The summary split by service class and by priority, against records worked out by hand; its tables, its
comparison rows, and what the load generator sends."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fleetserve.bench.client import ClientOptions, request_body
from fleetserve.bench.metrics import SLO, RequestRecord, records_from_jsonl, records_to_jsonl, summarize
from fleetserve.bench.report import comparison_rows, summary_tables
from fleetserve.workload.spec import RequestSpec


def record(request_id: str, sent: float, ttft: float, e2e: float, tokens: int, service_class: str = "online",
           priority: int = 0, success: bool = True) -> RequestRecord:
    """A request sent at `sent` whose tokens come evenly from its first at sent + ttft to its last at sent + e2e."""
    if not success:
        return RequestRecord(request_id, sent, sent, end_s=sent + e2e, success=False, error_kind="timeout",
                             service_class=service_class, priority=priority)
    step = (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0
    times = [sent + ttft + i * step for i in range(tokens)]
    return RequestRecord(request_id, sent, sent, first_token_s=times[0], token_times_s=times, end_s=sent + e2e,
                         output_tokens=tokens, prompt_tokens=100, service_class=service_class, priority=priority)


def mixed() -> list[RequestRecord]:
    """Online: TTFT 0.1 and 0.3 s (E2E 1 and 2 s); offline: TTFT 2 and 4 s (E2E 5 and 8 s) and one timeout.
    The run spans 0 to 10 s (the last offline request ends at 2 + 8)."""
    return [
        record("on-0", 0.0, 0.1, 1.0, 10),
        record("off-0", 0.0, 2.0, 5.0, 31, "offline", priority=5),
        record("on-1", 1.0, 0.3, 2.0, 18, priority=-1),
        record("off-1", 2.0, 4.0, 8.0, 41, "offline", priority=5),
        record("off-2", 3.0, 0.0, 1.0, 1, "offline", priority=5, success=False),
    ]


def test_the_split_by_class_holds_each_class_alone_over_the_whole_run():
    summary = summarize(mixed(), slo=SLO(ttft_ms=500))
    online, offline = summary["by_class"]["online"], summary["by_class"]["offline"]
    assert list(summary["by_class"]) == ["online", "offline"]
    assert (online["num_requests"], online["completed"], online["failed"]) == (2, 2, 0)
    assert (offline["num_requests"], offline["completed"], offline["failed"]) == (3, 2, 1)
    assert offline["failures_by_kind"] == {"timeout": 1}
    assert online["ttft_ms"]["mean"] == pytest.approx(200) and online["ttft_ms"]["max"] == pytest.approx(300)
    assert offline["ttft_ms"]["p50"] == pytest.approx(3000) and offline["e2e_ms"]["mean"] == pytest.approx(6500)
    assert online["tpot_ms"]["min"] == pytest.approx(100)  # (1.0 - 0.1) / 9
    # Rates over the whole run's 10 s, so the classes add up to the total.
    assert online["duration_s"] == offline["duration_s"] == summary["duration_s"] == pytest.approx(10)
    assert online["request_throughput"] == pytest.approx(0.2) and offline["request_throughput"] == pytest.approx(0.2)
    assert online["output_token_throughput"] == pytest.approx(2.8)
    assert offline["output_token_throughput"] == pytest.approx(7.2)
    assert (online["output_token_throughput"] + offline["output_token_throughput"]
            == pytest.approx(summary["output_token_throughput"]))
    # TTFT <= 500 ms: both online requests, no offline one.
    assert (online["slo_met"], online["slo_attainment"], online["goodput"]) == (2, 1.0, pytest.approx(0.2))
    assert (offline["slo_met"], offline["slo_attainment"], offline["goodput"]) == (0, 0.0, 0.0)
    assert summary["slo_attainment"] == pytest.approx(0.4)
    assert "by_class" not in online and "by_priority" not in online


def test_the_split_by_priority_is_in_ascending_order_keyed_by_text():
    summary = summarize(mixed())
    assert list(summary["by_priority"]) == ["-1", "0", "5"]
    assert [group["num_requests"] for group in summary["by_priority"].values()] == [1, 1, 3]
    assert summary["by_priority"]["-1"]["ttft_ms"]["mean"] == pytest.approx(300)
    assert summary["by_priority"]["5"]["completed"] == 2


def test_a_single_class_run_keeps_its_summary_unchanged():
    records = [dataclasses.replace(r, service_class="online", priority=0) for r in mixed()]
    summary = summarize(records, slo=SLO(ttft_ms=500))
    assert "by_class" not in summary and "by_priority" not in summary
    assert list(summary) == ["num_requests", "completed", "failed", "failures_by_kind", "duration_s",
                             "total_input_tokens", "total_output_tokens", "request_throughput",
                             "output_token_throughput", "total_token_throughput", "ttft_ms", "tpot_ms", "itl_ms",
                             "e2e_ms", "send_lag_ms", "slo", "slo_met", "goodput", "slo_attainment"]


def test_one_class_at_several_priorities_has_only_the_priority_split():
    records = [dataclasses.replace(r, service_class="online") for r in mixed()]
    summary = summarize(records)
    assert "by_class" not in summary and list(summary["by_priority"]) == ["-1", "0", "5"]


def test_an_all_offline_run_still_shows_both_classes():
    records = [dataclasses.replace(r, service_class="offline", priority=0) for r in mixed()]
    by_class = summarize(records)["by_class"]
    assert by_class["offline"]["num_requests"] == 5
    assert by_class["online"]["num_requests"] == 0 and by_class["online"]["ttft_ms"]["mean"] is None
    assert by_class["online"]["request_throughput"] == 0.0


def test_records_log_their_class_only_when_it_is_not_the_default(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    records_to_jsonl(mixed(), path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "service_class" not in lines[0] and "priority" not in lines[0]
    assert (lines[1]["service_class"], lines[1]["priority"]) == ("offline", 5)
    assert lines[2]["priority"] == -1 and "service_class" not in lines[2]
    assert records_from_jsonl(path) == mixed()


def test_the_report_adds_a_table_per_split_and_compares_per_class():
    summary = summarize(mixed(), slo=SLO(ttft_ms=500))
    tables = summary_tables(summary)
    assert [table.title for table in tables[2:]] == ["by service class", "by priority (lower runs first)"]
    by_class = tables[2]
    assert [column.header for column in by_class.columns] == ["metric", "online", "offline"]
    rows = dict(zip(by_class.columns[0]._cells, zip(by_class.columns[1]._cells, by_class.columns[2]._cells)))
    assert rows["requests sent"] == ("2", "3") and rows["SLO attainment"] == ("100.0%", "0.0%")
    single = summarize([dataclasses.replace(r, service_class="online", priority=0) for r in mixed()])
    assert len(summary_tables(single)) == 2
    keys = [row.key for row in comparison_rows([single, summary])]
    assert "by_class.online.slo_attainment" in keys and "by_class.offline.output_token_throughput" in keys
    assert not any(key.startswith("by_class") for key in (row.key for row in comparison_rows([single])))


def test_the_load_generator_sends_class_and_priority_only_when_set():
    plain = request_body(RequestSpec("r", 0.0, 3, 2, prompt_token_ids=[1, 2, 3]), "m", ClientOptions())
    assert "priority" not in plain and "service_class" not in plain
    spec = RequestSpec("r", 0.0, 3, 2, prompt_token_ids=[1, 2, 3], priority=-1, service_class="offline")
    body = request_body(spec, "m", ClientOptions())
    assert (body["priority"], body["service_class"]) == (-1, "offline")
