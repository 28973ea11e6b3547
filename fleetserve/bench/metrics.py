"""The one definition of every serving metric, shared by the live benchmark and the simulator.

Definitions follow vLLM's `benchmark_serving`; all latencies are measured from when the request was
actually sent (`sent_s`), not from its scheduled arrival:
- TTFT: first token time - sent time.
- TPOT: (E2E - TTFT) / (output tokens - 1); undefined for a 1-token output (left out of TPOT stats,
  and, as in vLLM, such a request meets any TPOT SLO).
- ITL: the gaps between successive token (or chunk) arrivals of one request, pooled over requests.
- E2E: end time - sent time.
- Goodput: completed requests per second that meet every SLO given.
- SLO attainment: the fraction of all requests meeting every SLO given; failed requests count as misses,
  and so does a completed request lacking a measurement an SLO needs (e.g. no first token time).
Only successful requests enter the latency statistics and the token counts. Percentiles are
`np.percentile` (linear interpolation).

`summarize` returns a JSON-ready dict with these keys:
- `num_requests`, `completed`, `failed`: counts; `failures_by_kind`: {error kind: count}
  (a failure without a kind counts as "unknown").
- `duration_s`: the given duration, or the span from the earliest scheduled/sent time to the last end.
- `total_input_tokens`, `total_output_tokens`: over completed requests.
- `request_throughput` (completed/s), `output_token_throughput` (output tokens/s),
  `total_token_throughput` (input + output tokens/s); None when the duration is not positive.
- `ttft_ms`, `tpot_ms`, `itl_ms`, `e2e_ms`: each {count, mean, std, min, p50, p90, p95, p99, max}, in ms;
  every value but `count` is None when there are no samples.
- `send_lag_ms`: the same stats for how late each request was sent against its schedule
  (`sent_s - arrival_s`), over all requests; large values mean the load generator fell behind.
- `slo`: the SLO as {ttft_ms, tpot_ms, e2e_ms} (None entries unset), or None when no SLO is given;
  `slo_met` (count of requests meeting it), `goodput` (per second) and `slo_attainment` (0..1),
  all None without an SLO.
- `by_class`, only when some request is offline: {"online": ..., "offline": ...}, each the keys above
  over that class's requests alone (the SLO applied to each; rates over the whole run's duration, so the
  classes' throughputs add up to the total).
- `by_priority`, only when requests differ in priority: the same per priority, keyed by the priority as a
  string ("-1", "0"), in ascending order (first is the one that runs first).
A run whose requests are all online at one priority has neither key.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetserve.engine.sampling_params import ONLINE, SERVICE_CLASSES

STAT_NAMES = ("mean", "std", "min", "p50", "p90", "p95", "p99", "max")
_PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}


@dataclass
class RequestRecord:
    """What happened to one request, in seconds on one clock (wall or simulated)."""
    request_id: str
    arrival_s: float
    sent_s: float
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    end_s: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    success: bool = True
    error_kind: str | None = None
    error: str | None = None
    service_class: str = ONLINE
    priority: int = 0

    def to_jsonable(self) -> dict[str, Any]:
        """The record's fields, but the service class and priority while at their defaults, so the logs of
        single-class runs keep their shape."""
        data = dataclasses.asdict(self)
        for name, default in (("service_class", ONLINE), ("priority", 0)):
            if data[name] == default:
                del data[name]
        return data


def ttft(record: RequestRecord) -> float | None:
    first = record.first_token_s if record.first_token_s is not None else (
        record.token_times_s[0] if record.token_times_s else None)
    return None if first is None else first - record.sent_s


def e2e(record: RequestRecord) -> float | None:
    return None if record.end_s is None else record.end_s - record.sent_s


def tpot(record: RequestRecord) -> float | None:
    first, total = ttft(record), e2e(record)
    if first is None or total is None or record.output_tokens <= 1:
        return None
    return (total - first) / (record.output_tokens - 1)


def itl(record: RequestRecord) -> list[float]:
    times = record.token_times_s
    return [later - earlier for earlier, later in zip(times, times[1:])]


@dataclass(frozen=True)
class SLO:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.success:
            return False
        checks = ((self.ttft_ms, ttft(record)), (self.e2e_ms, e2e(record)))
        for limit_ms, value_s in checks:
            if limit_ms is not None and (value_s is None or value_s * 1000 > limit_ms):
                return False
        if self.tpot_ms is not None:
            if ttft(record) is None or e2e(record) is None:
                return False
            per_token = tpot(record)
            if per_token is not None and per_token * 1000 > self.tpot_ms:
                return False
        return True


_SLO_KEYS = {"ttft": "ttft_ms", "ttft_ms": "ttft_ms", "tpot": "tpot_ms", "tpot_ms": "tpot_ms",
             "e2e": "e2e_ms", "e2e_ms": "e2e_ms", "e2el": "e2e_ms"}


def parse_slo(text: str) -> SLO:
    """An SLO from "ttft=500,tpot=50,e2e=2000" (milliseconds; any subset; ':' works like '=')."""
    limits: dict[str, float] = {}
    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError(f"SLO {text!r} is empty; expected e.g. 'ttft=500,tpot=50,e2e=2000' (ms)")
    for part in parts:
        key, sep, value = part.replace(":", "=").partition("=")
        key = key.strip().lower()
        if not sep:
            raise ValueError(f"SLO part {part!r} is not key=milliseconds (in {text!r})")
        if key not in _SLO_KEYS:
            raise ValueError(f"SLO part {part!r} has unknown key {key!r}; expected ttft, tpot or e2e")
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"SLO part {part!r}: {value.strip()!r} is not a number of milliseconds") from None
        if not limit > 0 or limit == float("inf"):
            raise ValueError(f"SLO part {part!r}: the limit must be a positive finite number of ms")
        if _SLO_KEYS[key] in limits:
            raise ValueError(f"SLO part {part!r}: {key} is given twice in {text!r}")
        limits[_SLO_KEYS[key]] = limit
    return SLO(**limits)


def distribution_stats(values_ms: list[float]) -> dict[str, Any]:
    """count, mean, std, min, percentiles and max; all None (count 0) for no values."""
    if not values_ms:
        return {"count": 0, **{name: None for name in STAT_NAMES}}
    array = np.asarray(values_ms, dtype=float)
    stats: dict[str, Any] = {"count": int(array.size), "mean": float(array.mean()), "std": float(array.std()),
                             "min": float(array.min()), "max": float(array.max())}
    for name, percentile in _PERCENTILES.items():
        stats[name] = float(np.percentile(array, percentile))
    return {"count": stats["count"], **{name: stats[name] for name in STAT_NAMES}}


def _ms(values_s: list[float | None]) -> list[float]:
    return [value * 1000 for value in values_s if value is not None]


def _span_s(records: list[RequestRecord]) -> float | None:
    starts = [min(record.arrival_s, record.sent_s) for record in records]
    ends = [time for record in records
            for time in (record.end_s, *record.token_times_s[-1:], record.first_token_s, record.sent_s)
            if time is not None]
    if not starts or not ends:
        return None
    return max(ends) - min(starts)


def summarize(records: list[RequestRecord], duration_s: float | None = None, slo: SLO | None = None
              ) -> dict[str, Any]:
    """The benchmark summary; keys are listed in the module docstring."""
    duration = duration_s if duration_s is not None else _span_s(records)
    summary = _summary(records, duration, slo)
    if any(record.service_class != ONLINE for record in records):
        summary["by_class"] = {name: _summary([record for record in records if record.service_class == name],
                                              duration, slo)
                               for name in SERVICE_CLASSES}
    priorities = sorted({record.priority for record in records})
    if len(priorities) > 1:
        summary["by_priority"] = {str(priority): _summary([record for record in records
                                                           if record.priority == priority], duration, slo)
                                  for priority in priorities}
    return summary


def _summary(records: list[RequestRecord], duration: float | None, slo: SLO | None) -> dict[str, Any]:
    completed = [record for record in records if record.success]
    failures = Counter(record.error_kind or "unknown" for record in records if not record.success)
    input_tokens = sum(record.prompt_tokens for record in completed)
    output_tokens = sum(record.output_tokens for record in completed)

    def per_second(amount: float) -> float | None:
        return amount / duration if duration is not None and duration > 0 else None

    summary: dict[str, Any] = {
        "num_requests": len(records),
        "completed": len(completed),
        "failed": len(records) - len(completed),
        "failures_by_kind": dict(sorted(failures.items())),
        "duration_s": duration,
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": per_second(len(completed)),
        "output_token_throughput": per_second(output_tokens),
        "total_token_throughput": per_second(input_tokens + output_tokens),
        "ttft_ms": distribution_stats(_ms([ttft(record) for record in completed])),
        "tpot_ms": distribution_stats(_ms([tpot(record) for record in completed])),
        "itl_ms": distribution_stats(_ms([gap for record in completed for gap in itl(record)])),
        "e2e_ms": distribution_stats(_ms([e2e(record) for record in completed])),
        "send_lag_ms": distribution_stats(_ms([record.sent_s - record.arrival_s for record in records])),
        "slo": None, "slo_met": None, "goodput": None, "slo_attainment": None,
    }
    if slo is not None:
        met = sum(1 for record in records if slo.met_by(record))
        summary.update(slo=dataclasses.asdict(slo), slo_met=met, goodput=per_second(met),
                       slo_attainment=met / len(records) if records else None)
    return summary


def records_to_jsonl(records: list[RequestRecord], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_jsonable()) + "\n")


def records_from_jsonl(path: str | Path) -> list[RequestRecord]:
    return [record for record, _ in read_request_log(path)]


def read_request_log(path: str | Path, extra_fields: tuple[str, ...] = ()
                     ) -> list[tuple[RequestRecord, dict[str, Any]]]:
    """(record, {extra field: value}) per line of a `--requests-out` log; `extra_fields` (e.g. "spec") are
    required on every line besides the record's own."""
    path = Path(path)
    known = {f.name for f in dataclasses.fields(RequestRecord)} | set(extra_fields)
    required = {"request_id", "arrival_s", "sent_s"} | set(extra_fields)
    records: list[tuple[RequestRecord, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line}: not JSON ({error.msg}): {text[:80]!r}") from None
            if not isinstance(data, dict) or set(data) - known or required - set(data):
                found = sorted(data) if isinstance(data, dict) else type(data).__name__
                raise ValueError(f"{path}:{line}: fields {found} are not a request record; required "
                                 f"{sorted(required)}, allowed {sorted(known)}")
            extras = {name: data.pop(name) for name in extra_fields}
            record = RequestRecord(**data)
            records.append((record, extras))
    return records
