"""How often simulated drafts are accepted: each request has a rate a, the probability that a draft is
accepted given the drafts before it were (so a verification of k drafts accepts i of them, i < k, with
probability a**i * (1 - a), and all k with probability a**k: the geometric model speculative-decoding
analyses use).

The rate is either one fixed value for every request, or read from a recorded trace, a JSON file that is
one of:

- a list of rates, `[0.8, 0.35, 0.9]`: the n-th request to reach the fleet gets rate n modulo the list's
  length (the list cycles);
- an object from request id to rate, `{"req-1": 0.8, "req-2": 0.35, "*": 0.5}`: the key "*", if there,
  gives the rate of requests not named (without it, an unnamed request is an error).

A trace's rates may be 0 (a request whose drafts never matched); a fixed rate must be above 0, as a fleet
whose drafts are never accepted is the same run without speculation.

`draft_availability` is the fraction of decode steps at which the proposer finds a draft at all (a prompt
lookup that matches nothing drafts nothing). Draws are deterministic: each request's own random stream is
seeded by the seed and its id, so a request's draws do not depend on what other requests did.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RATE_KEY = "*"


@dataclass(frozen=True)
class AcceptanceModel:
    rate: float | None = None  # the same rate for every request
    rates: tuple[float, ...] = ()  # rates in the order requests reach the fleet, cycling
    by_request: tuple[tuple[str, float], ...] = ()  # (request id or "*", rate)
    draft_availability: float = 1.0
    seed: int = 0
    source: str | None = None  # the trace file the rates came from
    _by_id: dict[str, float] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        given = sum((self.rate is not None, bool(self.rates), bool(self.by_request)))
        if given != 1:
            raise ValueError("an acceptance model needs exactly one of a fixed rate, a list of rates or rates by "
                             "request id")
        if self.rate is not None and not 0 < self.rate <= 1:
            raise ValueError(f"the acceptance rate must be in (0, 1], got {self.rate}; it is the probability that "
                             "a draft is accepted given the drafts before it were")
        for rate in (*self.rates, *(rate for _, rate in self.by_request)):
            if not 0 <= rate <= 1:
                where = f" in {self.source}" if self.source else ""
                raise ValueError(f"acceptance rates must be in [0, 1], got {rate}{where}")
        if not 0 < self.draft_availability <= 1:
            raise ValueError(f"the draft availability must be in (0, 1], got {self.draft_availability}; it is the "
                             "fraction of decode steps at which a draft is found")
        self._by_id.update(self.by_request)

    @classmethod
    def load(cls, path: str | Path, draft_availability: float = 1.0, seed: int = 0) -> AcceptanceModel:
        """Read a recorded acceptance trace (the formats in the module's docstring)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"acceptance trace not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"acceptance trace {path} is not valid JSON ({exc.msg})") from None
        if isinstance(data, list) and data and all(_is_number(rate) for rate in data):
            return cls(rates=tuple(float(rate) for rate in data), draft_availability=draft_availability, seed=seed,
                       source=str(path))
        if isinstance(data, dict) and data and all(_is_number(rate) for rate in data.values()):
            return cls(by_request=tuple((str(key), float(rate)) for key, rate in data.items()),
                       draft_availability=draft_availability, seed=seed, source=str(path))
        raise ValueError(f"acceptance trace {path} must be a non-empty JSON list of rates, e.g. [0.8, 0.4], or an "
                         'object from request id to rate, e.g. {"req-1": 0.8, "*": 0.5}')

    def rate_of(self, request_id: str, arrival_index: int) -> float:
        if self.rate is not None:
            return self.rate
        if self.rates:
            return self.rates[arrival_index % len(self.rates)]
        rate = self._by_id.get(request_id, self._by_id.get(DEFAULT_RATE_KEY))
        if rate is None:
            raise ValueError(f"request {request_id!r} has no rate in the acceptance trace {self.source}; add it, "
                             f'or a default under "{DEFAULT_RATE_KEY}"')
        return rate


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class AcceptanceDraws:
    """One simulation's draws: each request's rate (fixed when it reaches the fleet) and random stream."""

    def __init__(self, model: AcceptanceModel) -> None:
        self.model = model
        self.arrived = 0
        self.requests: dict[str, tuple[float, random.Random]] = {}

    def arrive(self, request_id: str) -> None:
        if request_id not in self.requests:
            rate = self.model.rate_of(request_id, self.arrived)
            self.requests[request_id] = (rate, random.Random(f"acceptance:{self.model.seed}:{request_id}"))
            self.arrived += 1

    def accepted(self, request_id: str, drafts: int) -> int:
        """How many of `drafts` drafts a verification accepts: each in turn, while the ones before were."""
        rate, stream = self.requests[request_id]
        accepted = 0
        while accepted < drafts and stream.random() < rate:
            accepted += 1
        return accepted

    def release(self, request_id: str) -> None:
        self.requests.pop(request_id, None)
