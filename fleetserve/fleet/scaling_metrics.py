"""The fleet's record of scaling: a timeline of events, replica-hours and their cost, the time from each
scale-up decision to the new replica serving, and the Prometheus metrics of all that on the router's /metrics.

A replica is paid for from the moment it is started until it has stopped (starting and draining included),
at its pool's price per hour from the hardware catalog (fleetserve.perf.hardware) when its pool names a
catalog entry, else at the fleet's `replica_price_per_hour`.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetserve.perf.hardware import CATALOG

MAX_EVENTS = 1000  # the timeline keeps the latest ones
STATES = ("serving", "starting", "draining")


class FleetLedger:
    """What the scaling loop records: events, replica time and cost, decisions and scale-up times."""

    def __init__(self, replica_price_per_hour: float = 0.0) -> None:
        if replica_price_per_hour < 0:
            raise ValueError(f"the price per replica-hour must not be negative, got {replica_price_per_hour}")
        self.replica_price_per_hour = replica_price_per_hour
        self.started_at = time.monotonic()
        self.events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self.scale_ups_s: list[float] = []  # decision to serving, of each replica an autoscaler decision started
        self.desired: int | None = None
        self.last_reason = ""  # of the autoscaler's latest decision, acted on or not
        self._running: dict[str, tuple[float, float]] = {}  # replica id: (started at, price per hour)
        self._ended_replica_s = 0.0
        self._ended_cost = 0.0

    def price_of(self, pool: str | None) -> float:
        hardware = CATALOG.get(pool) if pool is not None else None
        return hardware.price_per_hour_usd if hardware is not None else self.replica_price_per_hour

    def record(self, event: str, replica_id: str | None = None, **detail: object) -> None:
        now = time.monotonic()
        self.events.append({"t": round(now - self.started_at, 3), "time": round(time.time(), 3), "event": event,
                            "replica": replica_id, **detail})

    def replica_started(self, replica_id: str, pool: str | None, now: float) -> None:
        self._running[replica_id] = (now, self.price_of(pool))

    def replica_ended(self, replica_id: str, now: float) -> None:
        started = self._running.pop(replica_id, None)
        if started is not None:
            self._ended_replica_s += now - started[0]
            self._ended_cost += (now - started[0]) / 3600 * started[1]

    def replica_hours(self, now: float) -> float:
        return (self._ended_replica_s + sum(now - since for since, _ in self._running.values())) / 3600

    def cost(self, now: float) -> float:
        return self._ended_cost + sum((now - since) / 3600 * price for since, price in self._running.values())

    def scaled_up(self, seconds: float) -> None:
        self.scale_ups_s.append(seconds)

    def describe(self) -> dict:
        now = time.monotonic()
        return {"desired": self.desired, "reason": self.last_reason, "replica_hours": self.replica_hours(now),
                "cost": self.cost(now), "replica_price_per_hour": self.replica_price_per_hour,
                "scale_up_seconds": [round(s, 3) for s in self.scale_ups_s], "events": list(self.events)}


class FleetScalingCollector(Collector):
    """Read at scrape time: replicas by state, pending scale actions, desired count, last scale-up time,
    replica-hours and cost."""

    def __init__(self, ledger: FleetLedger, states: Callable[[], dict[str, int]]) -> None:
        self.ledger = ledger
        self.states = states

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        counts = self.states()
        by_state = GaugeMetricFamily("fleetserve:fleet_replicas", "Replicas by state: serving (healthy, taking "
                                     "requests), starting (started, not serving yet), draining", labels=["state"])
        for state in STATES:
            by_state.add_metric([state], float(counts.get(state, 0)))
        yield by_state
        yield GaugeMetricFamily("fleetserve:fleet_pending_scale_actions", "Scale actions ordered and not done: "
                                "replicas starting plus replicas draining",
                                value=float(counts.get("starting", 0) + counts.get("draining", 0)))
        if self.ledger.desired is not None:
            yield GaugeMetricFamily("fleetserve:fleet_desired_replicas", "The replica count the autoscaler wants",
                                    value=float(self.ledger.desired))
        if self.ledger.scale_ups_s:
            yield GaugeMetricFamily("fleetserve:fleet_last_scale_up_seconds", "Time from the last scale-up "
                                    "decision to its new replica's first passing health check",
                                    value=self.ledger.scale_ups_s[-1])
        yield CounterMetricFamily("fleetserve:fleet_replica_hours", "Replica-hours run so far (from start to "
                                  "stop, starting and draining included)", value=self.ledger.replica_hours(now))
        yield CounterMetricFamily("fleetserve:fleet_cost", "Cost of the replica-hours so far, at each pool's "
                                  "catalog price or the fleet's price per replica-hour", value=self.ledger.cost(now))


def register_fleet_metrics(registry: CollectorRegistry, ledger: FleetLedger,
                           states: Callable[[], dict[str, int]]) -> Counter:
    """Put the fleet's scaling metrics on the router's registry; returns the counter of scale decisions."""
    registry.register(FleetScalingCollector(ledger, states))
    return Counter("fleetserve:fleet_scale_decisions", "Scale actions the autoscaler took, by direction (up: "
                   "replicas started, down: replicas drained)", ["direction"], registry=registry)
