"""What to send and when: a request spec per request, and a workload that holds them in arrival order.

A spec says how long the prompt and the answer are, not necessarily what they say: trace readers only
know lengths, and `synthesize_prompts` fills in the text later for a given tokenizer.

Shared prefixes are described by `prefix_ids`: block i of `prefix_block_tokens` tokens covers prompt
tokens [i * B, (i + 1) * B), the last block possibly only in part. Two specs whose prefix ids agree on
their first k ids share their first k * B prompt tokens (or up to the shorter prompt). Prompt tokens past
the last prefix block are unique to the request.

A spec also carries how the request is served: `priority` (vLLM's meaning: lower runs first; default 0) and
`service_class` ("online", latency-bound, the default; or "offline", filling the capacity online work
leaves). `fleetserve.workload.classes` tags, mixes and merges workloads by class and priority.

Every transformation returns a new `Workload` and appends a line to `transforms`, so a report can say
exactly how a trace was scaled before it was replayed.
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fleetserve.engine.sampling_params import ONLINE, SERVICE_CLASSES

# Left out of a spec's JSON while at their defaults, so the logs of single-class runs keep their shape.
_SERVICE_DEFAULTS: dict[str, Any] = {"priority": 0, "service_class": ONLINE}


@dataclass
class RequestSpec:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    session_id: str | None = None
    turn: int = 0
    prefix_ids: list[int] = field(default_factory=list)
    prefix_block_tokens: int = 0
    priority: int = 0
    service_class: str = ONLINE

    def __post_init__(self) -> None:
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise ValueError(f"request {self.request_id!r}: priority must be a whole number (lower runs first), "
                             f"got {self.priority!r}")
        if self.service_class not in SERVICE_CLASSES:
            raise ValueError(f"request {self.request_id!r}: service_class must be one of {list(SERVICE_CLASSES)}, "
                             f"got {self.service_class!r}")
        if self.prompt_tokens < 1:
            raise ValueError(f"request {self.request_id!r}: prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"request {self.request_id!r}: output_tokens must be >= 1, got {self.output_tokens}")
        if self.prefix_ids and self.prefix_block_tokens < 1:
            raise ValueError(f"request {self.request_id!r}: has {len(self.prefix_ids)} prefix ids but "
                             f"prefix_block_tokens={self.prefix_block_tokens}")

    def with_lengths(self, prompt_tokens: int, output_tokens: int, prefix_block_tokens: int | None = None
                     ) -> RequestSpec:
        """The same request with new lengths; prefix ids beyond the new prompt are dropped.

        A changed prompt length (or block size) drops the prompt text and token ids, which would no longer
        match; `synthesize_prompts` fills them in again.
        """
        block = self.prefix_block_tokens if prefix_block_tokens is None else prefix_block_tokens
        prefix_ids = self.prefix_ids[:math.ceil(prompt_tokens / block)] if block > 0 else []
        prompt_changed = prompt_tokens != self.prompt_tokens or block != self.prefix_block_tokens
        return dataclasses.replace(self, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                                   prefix_ids=prefix_ids, prefix_block_tokens=block if prefix_ids else 0,
                                   prompt=None if prompt_changed else self.prompt,
                                   prompt_token_ids=None if prompt_changed else self.prompt_token_ids)

    def to_jsonable(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name, default in _SERVICE_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_jsonable(cls, data: dict[str, Any]) -> RequestSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown request spec fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


@dataclass
class Workload:
    requests: list[RequestSpec]
    name: str
    source: str
    transforms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.requests = sorted(self.requests, key=lambda spec: spec.arrival_s)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[RequestSpec]:
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        """Time from the first arrival to the last."""
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    def _derived(self, requests: list[RequestSpec], transform: str) -> Workload:
        return Workload(requests, self.name, self.source, [*self.transforms, transform])

    def scaled(self, speedup: float) -> Workload:
        """Compress time: every arrival happens `speedup` times sooner (2.0 doubles the request rate)."""
        if not speedup > 0 or math.isinf(speedup):
            raise ValueError(f"speedup must be a positive finite number, got {speedup}")
        requests = [dataclasses.replace(spec, arrival_s=spec.arrival_s / speedup) for spec in self.requests]
        return self._derived(requests, f"time compressed x{speedup:g}")

    def scale_lengths(self, factor: float, output_factor: float | None = None) -> Workload:
        """Multiply prompt lengths by `factor` and output lengths by `output_factor` (default: `factor`).

        Prefix blocks shrink by the same factor, so the fraction of each prompt that is shared stays put.
        """
        output_factor = factor if output_factor is None else output_factor
        for label, value in (("factor", factor), ("output_factor", output_factor)):
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{label} must be a positive finite number, got {value}")

        def scale(spec: RequestSpec) -> RequestSpec:
            block = max(1, round(spec.prefix_block_tokens * factor)) if spec.prefix_block_tokens else 0
            return spec.with_lengths(max(1, round(spec.prompt_tokens * factor)),
                                     max(1, round(spec.output_tokens * output_factor)), block)

        return self._derived([scale(spec) for spec in self.requests],
                             f"lengths scaled prompt x{factor:g} output x{output_factor:g}")

    def cap_lengths(self, max_prompt: int | None = None, max_output: int | None = None) -> Workload:
        """Truncate prompts longer than `max_prompt` and outputs longer than `max_output` tokens."""
        for label, value in (("max_prompt", max_prompt), ("max_output", max_output)):
            if value is not None and value < 1:
                raise ValueError(f"{label} must be >= 1 or None, got {value}")
        requests = [spec.with_lengths(min(spec.prompt_tokens, max_prompt or spec.prompt_tokens),
                                      min(spec.output_tokens, max_output or spec.output_tokens))
                    for spec in self.requests]
        return self._derived(requests, f"lengths capped prompt<={max_prompt} output<={max_output}")

    def head(self, n: int) -> Workload:
        """The first `n` requests by arrival."""
        if n < 0:
            raise ValueError(f"head needs n >= 0, got {n}")
        return self._derived(self.requests[:n], f"first {n} requests")

    def window(self, duration_s: float, start_s: float = 0.0) -> Workload:
        """Requests arriving in [start_s, start_s + duration_s), re-timed so the window starts at 0."""
        if not duration_s > 0:
            raise ValueError(f"window needs duration_s > 0, got {duration_s}")
        end_s = start_s + duration_s
        requests = [dataclasses.replace(spec, arrival_s=spec.arrival_s - start_s)
                    for spec in self.requests if start_s <= spec.arrival_s < end_s]
        return self._derived(requests, f"window [{start_s:g}s, {end_s:g}s)")

    def describe(self) -> dict[str, Any]:
        """Counts and rates for a report's caption."""
        n = len(self.requests)
        prompt_total = sum(spec.prompt_tokens for spec in self.requests)
        output_total = sum(spec.output_tokens for spec in self.requests)
        return {
            "name": self.name,
            "source": self.source,
            "transforms": list(self.transforms),
            "num_requests": n,
            "duration_s": self.duration_s,
            "request_rate": (n - 1) / self.duration_s if self.duration_s > 0 else None,
            "mean_prompt_tokens": prompt_total / n if n else None,
            "mean_output_tokens": output_total / n if n else None,
            "sessions": len({spec.session_id for spec in self.requests if spec.session_id is not None}),
            **self._service_counts(),
        }

    def _service_counts(self) -> dict[str, Any]:
        """{"service_classes": {class: count}, "priorities": {priority: count}}, or {} when every request is an
        online one at priority 0 (so single-class descriptions keep their keys)."""
        if all(spec.priority == 0 and spec.service_class == ONLINE for spec in self.requests):
            return {}
        classes = Counter(spec.service_class for spec in self.requests)
        priorities = Counter(spec.priority for spec in self.requests)
        return {"service_classes": {name: classes[name] for name in SERVICE_CLASSES if classes[name]},
                "priorities": {str(priority): priorities[priority] for priority in sorted(priorities)}}

    def to_jsonable(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "transforms": list(self.transforms),
                "requests": [spec.to_jsonable() for spec in self.requests]}

    @classmethod
    def from_jsonable(cls, data: dict[str, Any]) -> Workload:
        missing = sorted({"name", "source", "requests"} - set(data))
        if missing:
            raise ValueError(f"workload JSON lacks keys {missing}; found {sorted(data)}")
        return cls([RequestSpec.from_jsonable(item) for item in data["requests"]],
                   data["name"], data["source"], list(data.get("transforms", [])))
