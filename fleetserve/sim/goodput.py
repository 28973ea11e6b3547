"""Goodput, DistServe's way: the highest request rate at which at least `attainment` (90%) of requests meet
both their TTFT and TPOT SLO, found by simulation, and per GPU (that rate over the fleet's devices).

The workload is replayed at different rates by stretching its own arrival times (a trace keeps its shape,
a Poisson workload stays Poisson at the new rate); a workload whose requests all arrive at once is given
Poisson arrivals, seeded, so every rate sees one pattern at a different speed. SLO attainment is the
metrics module's (fleetserve.bench.metrics), the one `bench serve` and `sim` report.

The search brackets the answer by doubling (or halving) from `start_rate`, then bisects the bracket
`iterations` times. Attainment is taken to fall as the rate rises; with a simulation that is deterministic
for a given rate, a looser SLO (never a lower attainment at any rate) never yields a lower goodput.
`ratio_search` runs the search on every prefill:decode split of a number of devices.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from fleetserve.bench.metrics import SLO, RequestRecord, summarize
from fleetserve.bench.serve import retimed_poisson
from fleetserve.workload.spec import Workload


@dataclass(frozen=True)
class GoodputSearch:
    slo: SLO
    attainment: float = 0.9  # DistServe's target: 90% of requests within the SLO
    start_rate: float = 1.0  # req/s where the bracketing starts
    iterations: int = 6  # bisection steps: the answer is within the bracket / 2**iterations
    max_steps: int = 10  # doublings (or halvings) the bracketing may take

    def __post_init__(self) -> None:
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment must be in (0, 1], got {self.attainment}")
        if not self.start_rate > 0 or math.isinf(self.start_rate):
            raise ValueError(f"start_rate must be a positive finite number of req/s, got {self.start_rate}")
        if self.iterations < 0 or self.max_steps < 1:
            raise ValueError(f"iterations must be >= 0 and max_steps >= 1, got {self.iterations} and "
                             f"{self.max_steps}")
        if self.slo.ttft_ms is None and self.slo.tpot_ms is None and self.slo.e2e_ms is None:
            raise ValueError("a goodput search needs an SLO: give ttft and tpot (ms), e.g. ttft=500,tpot=50")


@dataclass
class Goodput:
    rate: float  # req/s; 0 when even the slowest rate tried misses the target
    devices: int
    attainment: float | None  # at `rate`; None when rate is 0
    trials: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment), in the order tried

    @property
    def per_gpu(self) -> float:
        return self.rate / self.devices

    def to_jsonable(self) -> dict:
        return {"rate": self.rate, "devices": self.devices, "per_gpu": self.per_gpu, "attainment": self.attainment,
                "trials": [{"rate": rate, "attainment": attained} for rate, attained in self.trials]}


def attainment_of(records: list[RequestRecord], slo: SLO) -> float:
    return float(summarize(records, None, slo)["slo_attainment"] or 0.0)


def at_rate(workload: Workload, rate: float, seed: int = 0) -> Workload:
    """The workload's requests arriving at `rate` req/s: its own arrival times stretched, or Poisson arrivals
    when they all arrive at once."""
    if len(workload) < 2 or not workload.duration_s > 0:
        return retimed_poisson(workload, rate, seed)
    return workload.scaled(rate * workload.duration_s / (len(workload) - 1))


class RateTrials:
    """The records of a workload replayed at any rate, each rate simulated once (several SLOs share them)."""

    def __init__(self, workload: Workload, run: Callable[[Workload], list[RequestRecord]], seed: int = 0) -> None:
        self.workload, self.run, self.seed = workload, run, seed
        self._records: dict[float, list[RequestRecord]] = {}

    def records_at(self, rate: float) -> list[RequestRecord]:
        if rate not in self._records:
            self._records[rate] = self.run(at_rate(self.workload, rate, self.seed))
        return self._records[rate]

    def attainment_at(self, rate: float, slo: SLO) -> float:
        return attainment_of(self.records_at(rate), slo)


def find_goodput(attainment_at: Callable[[float], float], devices: int, search: GoodputSearch) -> Goodput:
    """The highest rate whose attainment (by `attainment_at(rate)`) reaches the target, per the module docstring."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    trials: list[tuple[float, float]] = []

    def meets(rate: float) -> bool:
        attained = attainment_at(rate)
        trials.append((rate, attained))
        return attained >= search.attainment

    rate = search.start_rate
    if meets(rate):
        low, high = rate, None
        for _ in range(search.max_steps):
            if not meets(rate * 2):
                high = rate * 2
                break
            rate *= 2
            low = rate
        if high is None:
            raise ValueError(f"SLO attainment is still {trials[-1][1]:.1%} at {low:g} req/s, {search.max_steps} "
                             f"doublings above {search.start_rate:g}: the workload is too short to load the fleet "
                             f"(its requests are served before a queue builds up); replay more requests")
    else:
        low, high = 0.0, rate
        for _ in range(search.max_steps):
            rate /= 2
            if meets(rate):
                low = rate
                break
            high = rate
        if low == 0.0:
            return Goodput(0.0, devices, None, trials)
    low = bisect_rate(meets, low, high, search.iterations)
    attained = next(attained for rate, attained in trials if rate == low)
    return Goodput(low, devices, attained, trials)


def bisect_rate(meets: Callable[[float], bool], low: float, high: float, iterations: int) -> float:
    """The highest rate found to meet the target between `low` (which meets it) and `high` (which does not),
    after `iterations` halvings of the bracket; the planner's capacity search ends with it too."""
    for _ in range(iterations):
        middle = (low + high) / 2
        if meets(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass
class RatioSearch:
    """Goodput of every prefill:decode split of a number of devices, and the best split."""
    table: dict[tuple[int, int], Goodput]  # (prefill, decode) -> goodput

    @property
    def best(self) -> tuple[int, int]:
        # The highest goodput; among equals, the split with fewer prefill devices.
        return max(self.table, key=lambda split: (self.table[split].rate, -split[0]))

    def to_jsonable(self) -> dict:
        prefill, decode = self.best
        return {"best": {"prefill": prefill, "decode": decode, **self.table[self.best].to_jsonable()},
                "table": [{"prefill": p, "decode": d, "rate": g.rate, "per_gpu": g.per_gpu,
                           "attainment": g.attainment} for (p, d), g in sorted(self.table.items())]}


def splits(devices: int) -> list[tuple[int, int]]:
    """Every (prefill, decode) split with at least one of each: 8 -> (1, 7) ... (7, 1)."""
    if devices < 2:
        raise ValueError(f"a prefill:decode split needs at least 2 devices, got {devices}")
    return [(prefill, devices - prefill) for prefill in range(1, devices)]


def ratio_search(devices: int, goodput_of: Callable[[int, int], Goodput],
                 candidates: list[tuple[int, int]] | None = None) -> RatioSearch:
    """`goodput_of(prefill, decode)` for every split (or the given ones)."""
    return RatioSearch({split: goodput_of(*split) for split in (candidates or splits(devices))})
