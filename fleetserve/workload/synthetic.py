"""Synthetic workloads: arrival processes, length distributions, shared prefixes and multi-turn sessions.

Arrivals follow vLLM's benchmark: gaps between requests are drawn from a gamma distribution with shape
`burstiness` and mean 1/rate, so burstiness 1 is a Poisson process, below 1 is burstier and above 1 is
more regular (coefficient of variation 1/sqrt(burstiness)). "constant" spaces requests exactly 1/rate
apart. The first request arrives at 0; rate=inf sends everything at once.

Shared prefixes: with `shared_prefix_groups` G and `shared_prefix_tokens` T, request i (or session i)
belongs to group i % G and its prompt is the group's T tokens followed by `prompt_len` unique tokens.

Sessions: `sessions` conversations of `turns_per_session` turns each. Session starts follow the arrival
process at `rate` (sessions per second); each later turn arrives `think_time_s` after the previous one.
Turn k's prompt is the whole conversation so far (every earlier user message and answer) plus a new
message of `prompt_len` tokens, so its prefix ids extend those of turn k-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetserve.workload.spec import RequestSpec, Workload

ARRIVAL_PROCESSES = ("poisson", "gamma", "constant")
SESSION_BLOCK_TOKENS = 64


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: "fixed:N", "uniform:A:B" (inclusive) or "lognormal:MEAN:SIGMA".

    For lognormal, MEAN is the mean length in tokens and SIGMA the sigma of the underlying normal;
    samples are rounded and clipped to at least 1.
    """
    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        kind, *fields = text.strip().split(":")
        arity = {"fixed": 1, "uniform": 2, "lognormal": 2}
        if kind not in arity:
            raise ValueError(f"length distribution {text!r}: unknown kind {kind!r}; expected one of "
                             f"'fixed:N', 'uniform:A:B', 'lognormal:MEAN:SIGMA'")
        if len(fields) != arity[kind]:
            raise ValueError(f"length distribution {text!r}: {kind} takes {arity[kind]} number(s) "
                             f"separated by ':', got {len(fields)}")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise ValueError(f"length distribution {text!r}: {fields} are not all numbers") from None
        dist = cls(kind, *values)
        dist._validate(text)
        return dist

    def _validate(self, text: str) -> None:
        if not all(math.isfinite(value) for value in (self.a, self.b)):
            raise ValueError(f"length distribution {text!r}: values must be finite")
        if self.kind == "fixed" and (self.a < 1 or self.a != int(self.a)):
            raise ValueError(f"length distribution {text!r}: fixed length must be a whole number >= 1")
        whole = self.a == int(self.a) and self.b == int(self.b)
        if self.kind == "uniform" and not (whole and 1 <= self.a <= self.b):
            raise ValueError(f"length distribution {text!r}: uniform needs whole numbers 1 <= A <= B")
        if self.kind == "lognormal" and (self.a < 1 or self.b < 0):
            raise ValueError(f"length distribution {text!r}: lognormal needs MEAN >= 1 and SIGMA >= 0")

    @classmethod
    def of(cls, value: LengthDist | str | int) -> LengthDist:
        if isinstance(value, LengthDist):
            return value
        if isinstance(value, int):
            return cls.parse(f"fixed:{value}")
        return cls.parse(value)

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        if self.kind == "fixed":
            values = np.full(n, self.a)
        elif self.kind == "uniform":
            values = rng.integers(int(self.a), int(self.b), size=n, endpoint=True)
        else:
            mu = math.log(self.a) - self.b ** 2 / 2
            values = np.rint(rng.lognormal(mu, self.b, size=n))
        return [max(1, int(value)) for value in values]

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g}:{self.b:g}"


def arrival_times(n: int, rate: float, arrival: str, burstiness: float, rng: np.random.Generator
                  ) -> list[float]:
    """`n` arrival times starting at 0 with mean gap 1/rate."""
    if arrival not in ARRIVAL_PROCESSES:
        raise ValueError(f"unknown arrival process {arrival!r}; expected one of {list(ARRIVAL_PROCESSES)}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests per second (or inf), got {rate}")
    if not burstiness > 0 or math.isinf(burstiness):
        raise ValueError(f"burstiness must be a positive finite number, got {burstiness}")
    if arrival == "poisson" and burstiness != 1.0:
        raise ValueError(f"burstiness={burstiness} needs arrival='gamma' (poisson is gamma with burstiness 1)")
    if n == 0 or math.isinf(rate):
        return [0.0] * n
    if arrival == "constant":
        gaps = np.full(n - 1, 1.0 / rate)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


def synthetic_workload(num_requests: int | None, rate: float, arrival: str = "poisson",
                       burstiness: float = 1.0, prompt_len: LengthDist | str | int = "fixed:256",
                       output_len: LengthDist | str | int = "fixed:128", shared_prefix_groups: int = 0,
                       shared_prefix_tokens: int = 0, sessions: int = 0, turns_per_session: int = 1,
                       think_time_s: float = 5.0, seed: int = 0) -> Workload:
    """A workload described by the module docstring; `num_requests` may be None when `sessions` > 0."""
    prompt_dist, output_dist = LengthDist.of(prompt_len), LengthDist.of(output_len)
    _check_shape(num_requests, shared_prefix_groups, shared_prefix_tokens, sessions, turns_per_session,
                 think_time_s)
    rng = np.random.default_rng(seed)
    block = shared_prefix_tokens or SESSION_BLOCK_TOKENS
    group_prefix_ids = [[group] for group in range(shared_prefix_groups)]

    def group_of(index: int) -> list[int]:
        return group_prefix_ids[index % shared_prefix_groups] if shared_prefix_groups else []

    if sessions == 0:
        assert num_requests is not None
        starts = arrival_times(num_requests, rate, arrival, burstiness, rng)
        prompts, outputs = prompt_dist.sample(rng, num_requests), output_dist.sample(rng, num_requests)
        requests = [RequestSpec(f"synthetic-{i}", starts[i], shared_prefix_tokens + prompts[i], outputs[i],
                                prefix_ids=list(group_of(i)), prefix_block_tokens=block if group_of(i) else 0)
                    for i in range(num_requests)]
    else:
        requests = []
        starts = arrival_times(sessions, rate, arrival, burstiness, rng)
        next_block_id = shared_prefix_groups
        for session in range(sessions):
            messages = prompt_dist.sample(rng, turns_per_session)
            answers = output_dist.sample(rng, turns_per_session)
            history_tokens = 0
            session_block_ids: list[int] = []
            for turn in range(turns_per_session):
                own_tokens = history_tokens + messages[turn]
                while len(session_block_ids) * block < own_tokens:
                    session_block_ids.append(next_block_id)
                    next_block_id += 1
                requests.append(RequestSpec(
                    f"synthetic-s{session}-t{turn}", starts[session] + turn * think_time_s,
                    shared_prefix_tokens + own_tokens, answers[turn], session_id=f"session-{session}",
                    turn=turn, prefix_ids=group_of(session) + session_block_ids, prefix_block_tokens=block))
                history_tokens = own_tokens + answers[turn]
    description = (f"synthetic n={len(requests)} rate={rate:g} arrival={arrival} burstiness={burstiness:g} "
                   f"prompt={prompt_dist} output={output_dist} groups={shared_prefix_groups} "
                   f"prefix={shared_prefix_tokens} sessions={sessions} turns={turns_per_session} "
                   f"think={think_time_s:g} seed={seed}")
    return Workload(requests, name="synthetic", source=description)


def _check_shape(num_requests: int | None, groups: int, prefix_tokens: int, sessions: int, turns: int,
                 think_time_s: float) -> None:
    if groups < 0 or prefix_tokens < 0 or sessions < 0 or turns < 1:
        raise ValueError(f"need shared_prefix_groups >= 0 (got {groups}), shared_prefix_tokens >= 0 "
                         f"(got {prefix_tokens}), sessions >= 0 (got {sessions}), turns_per_session >= 1 "
                         f"(got {turns})")
    if (groups > 0) != (prefix_tokens > 0):
        raise ValueError(f"shared_prefix_groups={groups} and shared_prefix_tokens={prefix_tokens}: "
                         f"set both or neither")
    if not think_time_s >= 0 or math.isinf(think_time_s):
        raise ValueError(f"think_time_s must be a finite number >= 0, got {think_time_s}")
    if sessions == 0:
        if turns > 1:
            raise ValueError(f"turns_per_session={turns} needs sessions > 0")
        if num_requests is None or num_requests < 0:
            raise ValueError(f"num_requests must be a whole number >= 0, got {num_requests}")
    elif num_requests is not None and num_requests != sessions * turns:
        raise ValueError(f"num_requests={num_requests} but sessions={sessions} x turns_per_session={turns} "
                         f"makes {sessions * turns}; leave num_requests out or make them agree")


_SPEC_KEYS: dict[str, tuple[str, type]] = {
    "n": ("num_requests", int), "num_requests": ("num_requests", int),
    "rate": ("rate", float),
    "arrival": ("arrival", str),
    "burstiness": ("burstiness", float),
    "prompt": ("prompt_len", str), "prompt_len": ("prompt_len", str),
    "output": ("output_len", str), "output_len": ("output_len", str),
    "groups": ("shared_prefix_groups", int), "shared_prefix_groups": ("shared_prefix_groups", int),
    "prefix": ("shared_prefix_tokens", int), "shared_prefix_tokens": ("shared_prefix_tokens", int),
    "sessions": ("sessions", int),
    "turns": ("turns_per_session", int), "turns_per_session": ("turns_per_session", int),
    "think": ("think_time_s", float), "think_time_s": ("think_time_s", float),
    "seed": ("seed", int),
}


def parse_synthetic_spec(text: str) -> dict[str, Any]:
    """Keyword arguments for `synthetic_workload` from "rate=4,n=100,prompt=uniform:64:512,...".

    Length distributions are parsed here too, so a bad one is reported before any work starts.
    """
    kwargs: dict[str, Any] = {}
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or not value:
            raise ValueError(f"synthetic spec {text!r}: {part!r} is not key=value")
        if key not in _SPEC_KEYS:
            raise ValueError(f"synthetic spec {text!r}: unknown key {key!r}; known keys are "
                             f"{sorted(_SPEC_KEYS)}")
        name, kind = _SPEC_KEYS[key]
        if name in kwargs:
            raise ValueError(f"synthetic spec {text!r}: {key!r} is given twice")
        try:
            kwargs[name] = kind(value)
        except ValueError:
            raise ValueError(f"synthetic spec {text!r}: {key}={value!r} is not {kind.__name__}") from None
        if name in ("prompt_len", "output_len"):
            kwargs[name] = LengthDist.parse(value)
    if "rate" not in kwargs:
        raise ValueError(f"synthetic spec {text!r}: needs rate=<requests per second>")
    if "num_requests" not in kwargs and kwargs.get("sessions", 0) == 0:
        raise ValueError(f"synthetic spec {text!r}: needs n=<number of requests> (or sessions=<count>)")
    kwargs.setdefault("num_requests", None)
    return kwargs
