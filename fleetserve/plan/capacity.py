"""How many requests per second one replica sustains for one length bucket within the SLO, found by simulation.

A sample of the bucket's own requests (their lengths and shared prefixes) is replayed on one simulated
replica (the engine's scheduler and KV manager, the given step-time model) with Poisson arrivals; the
capacity is the highest rate whose SLO attainment, by the metrics module of `fleetserve bench serve`, is at
least the target. Attainment falls as the rate rises, so the rate is bisected between 0 and the replica's
saturated throughput (every sampled request at once). A replica that misses the target even with
requests arriving one by one (say, prompts too long to prefill within the TTFT SLO) has capacity 0: it
cannot serve that bucket.

The same unit-rate arrival pattern is stretched for every rate, so the search sees one workload at
different speeds, not a new random draw each time.

With a `fleet` of replicas with roles (a disaggregated unit, fleetserve.plan.disaggregated_units) and its
`disaggregation` rule and KV link, the sample is replayed on that group instead, and the capacity is the
group's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fleetserve.bench.metrics import SLO, summarize
from fleetserve.fleet.policies import LeastLoaded
from fleetserve.perf.hardware import FleetEntry, Hardware
from fleetserve.perf.model import PerfModel
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.goodput import bisect_rate
from fleetserve.sim.simulate import simulate
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import arrival_times


@dataclass(frozen=True)
class CapacitySearch:
    slo: SLO
    attainment: float = 0.95  # share of requests that must meet the SLO
    sample_requests: int = 200  # of each bucket's requests, replayed per trial
    iterations: int = 8  # bisection steps: the answer is within saturated throughput / 2**iterations
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment must be in (0, 1], got {self.attainment}")
        if self.sample_requests < 1 or self.iterations < 1:
            raise ValueError(f"sample_requests and iterations must be >= 1, got {self.sample_requests} and "
                             f"{self.iterations}")
        if self.slo.ttft_ms is None and self.slo.tpot_ms is None and self.slo.e2e_ms is None:
            raise ValueError("the capacity search needs an SLO (ttft, tpot or e2e)")


def sample_of(specs: Sequence[RequestSpec], size: int) -> list[RequestSpec]:
    """Up to `size` of the requests, spread evenly over the list (the same ones every time)."""
    if len(specs) <= size:
        return list(specs)
    return [specs[int(i * len(specs) / size)] for i in range(size)]


class BucketCapacity:
    """Capacity searches on one hardware type with one performance model and replica configuration."""

    def __init__(self, hardware: Hardware, perf: PerfModel, model_max_len: int, config: ReplicaConfig,
                 search: CapacitySearch, fleet: list[FleetEntry] | None = None,
                 disaggregation: Disaggregation | None = None) -> None:
        self.hardware, self.perf, self.model_max_len = hardware, perf, model_max_len
        self.config, self.search = config, search
        self.fleet = fleet or [FleetEntry(hardware, 1)]
        self.disaggregation = disaggregation

    def replay(self, sample: list[RequestSpec], arrivals_s: list[float], slo: SLO | None = None) -> dict:
        """The metrics module's summary of the sample replayed on one replica, arriving at these times."""
        requests = [dataclasses.replace(spec, request_id=f"c{i}", arrival_s=time)
                    for i, (spec, time) in enumerate(zip(sample, arrivals_s))]
        config = dataclasses.replace(self.config, max_queue=max(self.config.max_queue, len(requests)))
        run = simulate(Workload(requests, "capacity", "bucket sample"), self.fleet,
                       {self.hardware.name: self.perf}, LeastLoaded(), self.model_max_len, config,
                       SimOptions(record_token_times=False), disaggregation=self.disaggregation)
        return summarize(run.records, None, slo)

    def attainment_at(self, sample: list[RequestSpec], unit_times: list[float], rate: float) -> float:
        summary = self.replay(sample, [time / rate for time in unit_times], self.search.slo)
        return float(summary["slo_attainment"] or 0.0)

    def saturated_throughput(self, sample: list[RequestSpec]) -> float:
        summary = self.replay(sample, [0.0] * len(sample))
        return float(summary["request_throughput"] or 0.0) if summary["completed"] == len(sample) else 0.0

    def slowest_rate(self, sample: list[RequestSpec]) -> tuple[list[float], float]:
        """(the unit-rate arrival pattern, the slowest rate the search tries: requests one by one, far below
        saturation; 0 when the replica cannot serve the sample at all)."""
        unit_times = arrival_times(len(sample), 1.0, "poisson", 1.0, np.random.default_rng(self.search.seed))
        top = self.saturated_throughput(sample) if sample else 0.0
        return unit_times, top / 2 ** self.search.iterations

    def attainment_alone(self, specs: Sequence[RequestSpec]) -> float:
        """SLO attainment with the requests arriving one by one (the slowest rate the search tries)."""
        sample = sample_of(specs, self.search.sample_requests)
        unit_times, low = self.slowest_rate(sample)
        return self.attainment_at(sample, unit_times, low) if low > 0 else 0.0

    def capacity(self, specs: Sequence[RequestSpec]) -> float:
        """Requests per second one replica sustains for these requests at the target attainment (0: none)."""
        search = self.search
        sample = sample_of(specs, search.sample_requests)
        unit_times, low = self.slowest_rate(sample)
        if low <= 0 or self.attainment_at(sample, unit_times, low) < search.attainment:
            return 0.0
        high = low * 2 ** search.iterations
        if self.attainment_at(sample, unit_times, high) >= search.attainment:
            return high
        return bisect_rate(lambda rate: self.attainment_at(sample, unit_times, rate) >= search.attainment, low, high,
                           search.iterations)
