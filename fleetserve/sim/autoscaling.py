"""Autoscaling a simulated fleet with the live fleet's decision object (fleetserve.fleet.autoscaler).

Every `interval_s` of simulated time the fleet's serving replicas are handed to `Autoscaler.decide` as a
`FleetLoad` (their router-side snapshot, the replicas starting and draining, and the requests routed so
far), and its decision is carried out on the virtual clock:

- a replica ordered to start is built (or a stopped one is reused, its prefix cache emptied) and serves
  after the cold start (fleetserve.perf.cold_start); until then the router does not see it as healthy;
- a replica ordered to drain leaves routing at once (the router marks it unhealthy, so no policy picks
  it), finishes the requests it holds, and stops when it goes idle.

A replica costs GPU time from its start order until it stops (starting and draining included), so the
GPU-hours are the integral of the replicas alive over the run, priced at the hardware's catalog price.
The fleet's counts over time (serving, starting, draining) change only at these events and are recorded
at each; every decision also records the count the policy wanted and the change the delays held back.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict
from typing import Any

from fleetserve.fleet.autoscale_slo import SLOPredictor
from fleetserve.fleet.autoscaler import ArrivalCounts, Autoscaler, FleetLoad
from fleetserve.fleet.snapshot import FleetSnapshot
from fleetserve.perf.hardware import get_hardware
from fleetserve.sim.config import Autoscaling
from fleetserve.sim.fleet import SimFleet
from fleetserve.sim.replica import SimReplica

STARTING, SERVING, DRAINING, STOPPED = "starting", "serving", "draining", "stopped"


def sim_autoscaler(autoscaling: Autoscaling, replicas: list[SimReplica]) -> SimAutoscaler:
    """The autoscaler for a fleet that starts with `replicas` (one hardware): the `slo` policy's predictor from
    their performance model and engine settings, the cold start and price from their hardware."""
    config = autoscaling.config
    if not config.min_replicas <= len(replicas) <= config.max_replicas:
        raise ValueError(f"the fleet starts with {len(replicas)} replicas, outside the autoscaling bounds "
                         f"[{config.min_replicas}, {config.max_replicas}]; give --fleet a count within them")
    template = replicas[0]
    predictor = None
    if config.policy == "slo":
        scheduler = template.scheduler.config
        predictor = SLOPredictor(template.perf, scheduler.max_num_batched_tokens, scheduler.max_num_seqs)
    hardware = get_hardware(template.hardware_name)
    cold_start_s = autoscaling.cold_start.seconds(autoscaling.model_bytes, hardware)
    return SimAutoscaler(Autoscaler(config, predictor), cold_start_s, hardware.price_per_hour_usd)


class SimAutoscaler:
    def __init__(self, autoscaler: Autoscaler, cold_start_s: float, price_per_hour_usd: float) -> None:
        if not cold_start_s >= 0:
            raise ValueError(f"the cold start must be >= 0 seconds, got {cold_start_s}")
        self.autoscaler = autoscaler
        self.interval_s = autoscaler.config.interval_s
        self.cold_start_s = cold_start_s
        self.price_per_hour_usd = price_per_hour_usd
        self.fleet: SimFleet | None = None
        self.state: list[str] = []  # per replica index
        self.alive_s: list[float] = []  # per replica index: seconds from start order to stop
        self._alive_since: dict[int, float] = {}
        self._ready: list[tuple[float, int]] = []  # (serves from, replica index), a heap
        self.next_tick_s = self.interval_s
        self.next_s = self.next_tick_s  # the next moment the autoscaler has something to do
        self.arrived = [0, 0, 0]  # requests, uncached prompt tokens, output tokens routed so far
        self.counts = {STARTING: 0, SERVING: 0, DRAINING: 0}
        self.replica_s = {STARTING: 0.0, SERVING: 0.0, DRAINING: 0.0}  # integrals of the counts
        self._last_change_s = 0.0
        self.changes: dict[str, list[float]] = {"times_s": [], STARTING: [], SERVING: [], DRAINING: []}
        self.decisions: dict[str, list[float]] = {"times_s": [], "desired": [], "pending": []}
        self.actions: list[dict[str, Any]] = []
        self.peak_alive = 0

    def attach(self, fleet: SimFleet) -> None:
        """The fleet's replicas serve from the start."""
        self.fleet = fleet
        for index in range(len(fleet.replicas)):
            self.state.append(SERVING)
            self.alive_s.append(0.0)
            self._alive_since[index] = 0.0
        self.counts[SERVING] = len(fleet.replicas)
        self._record(0.0)

    def routed(self, prompt_tokens: int, output_tokens: int) -> None:
        arrived = self.arrived
        arrived[0] += 1
        arrived[1] += prompt_tokens
        arrived[2] += output_tokens

    # --- events -------------------------------------------------------------------------------------

    def run(self, now: float) -> None:
        """Whatever is due at `now`: a decision, replicas that finished starting."""
        if now >= self.next_tick_s:
            self._decide(now)
            self.next_tick_s = now + self.interval_s
        while self._ready and self._ready[0][0] <= now:
            _, index = heapq.heappop(self._ready)
            self._serve(index, now)
        self.next_s = min(self.next_tick_s, self._ready[0][0] if self._ready else math.inf)

    def went_idle(self, index: int, now: float) -> None:
        if self.state[index] == DRAINING:
            self._stop(index, now)

    def finish(self, now: float) -> None:
        """The run ended at `now`: replicas still alive count until then."""
        self._record(now)
        for index, since in self._alive_since.items():
            self.alive_s[index] += now - since
        self._alive_since = {index: now for index in self._alive_since}

    # --- decisions ----------------------------------------------------------------------------------

    def _decide(self, now: float) -> None:
        fleet = self.fleet
        assert fleet is not None
        serving = [replica.router.state() for index, replica in enumerate(fleet.replicas)
                   if self.state[index] == SERVING]
        load = FleetLoad(now, FleetSnapshot(tuple(serving)), self.counts[STARTING], self.counts[DRAINING],
                         ArrivalCounts(*self.arrived))
        decision = self.autoscaler.decide(load)
        decisions = self.decisions
        decisions["times_s"].append(now)
        decisions["desired"].append(decision.desired)
        decisions["pending"].append(0 if decision.acts else decision.desired - len(serving) - self.counts[STARTING])
        for _ in range(decision.start):
            self._start(now, decision.reason)
        for replica_id in decision.drain:
            self._drain(fleet.index_of[replica_id], now, decision.reason)

    def _start(self, now: float, reason: str) -> None:
        fleet = self.fleet
        assert fleet is not None
        index = next((i for i, state in enumerate(self.state) if state == STOPPED), None)
        if index is None:
            index = fleet.add_replica(self._new_replica(fleet))
            self.state.append(STOPPED)
            self.alive_s.append(0.0)
        self._change(index, STARTING, now, reason)
        self._alive_since[index] = now
        heapq.heappush(self._ready, (now + self.cold_start_s, index))

    def _new_replica(self, fleet: SimFleet) -> SimReplica:
        """One more replica like the fleet's first: same hardware, performance model and engine settings."""
        template = fleet.replicas[0]
        replica = SimReplica(f"{template.hardware_name}-{len(fleet.replicas)}", template.hardware_name, template.perf,
                          template.config, template.max_model_len, template.options, weight=template.router.weight,
                          acceptance=template.acceptance, role=template.role)
        replica.router.healthy = False  # the router sees it once it serves
        return replica

    def _serve(self, index: int, now: float) -> None:
        fleet = self.fleet
        assert fleet is not None
        self._change(index, SERVING, now, "cold start done")
        fleet.replicas[index].router.healthy = True
        fleet.view.touched(index)
        if fleet.held:
            fleet._release_held(now)

    def _drain(self, index: int, now: float, reason: str) -> None:
        fleet = self.fleet
        assert fleet is not None
        self._change(index, DRAINING, now, reason)
        replica = fleet.replicas[index]
        replica.router.healthy = False
        fleet.view.touched(index)
        if replica.busy_until is None and not replica.tracked:
            self._stop(index, now)

    def _stop(self, index: int, now: float) -> None:
        fleet = self.fleet
        assert fleet is not None
        self._change(index, STOPPED, now, "drained")
        self.alive_s[index] += now - self._alive_since.pop(index)
        fleet.replicas[index].kv.reset_prefix_cache()  # a restarted replica starts with an empty cache
        fleet.view.touched(index)

    def _change(self, index: int, state: str, now: float, reason: str) -> None:
        self._integrate(now)
        before = self.state[index]
        if before in self.counts:
            self.counts[before] -= 1
        if state in self.counts:
            self.counts[state] += 1
        self.state[index] = state
        assert self.fleet is not None
        self.actions.append({"time_s": now, "replica": self.fleet.replicas[index].replica_id, "state": state,
                             "reason": reason})
        self._record(now)

    def _integrate(self, now: float) -> None:
        elapsed = now - self._last_change_s
        for state, count in self.counts.items():
            self.replica_s[state] += count * elapsed
        self._last_change_s = now

    def _record(self, now: float) -> None:
        self._integrate(now)
        changes = self.changes
        if changes["times_s"] and changes["times_s"][-1] == now:  # several changes at one moment: keep the last
            for column in changes.values():
                column.pop()
        changes["times_s"].append(now)
        for state in (STARTING, SERVING, DRAINING):
            changes[state].append(self.counts[state])
        self.peak_alive = max(self.peak_alive, sum(self.counts.values()))

    # --- results ------------------------------------------------------------------------------------

    def stats(self, simulated_s: float) -> dict[str, Any]:
        """GPU-hours and cost, replica-hours by state, the actions taken, and the counts over time."""
        gpu_s = sum(self.replica_s.values())
        config = self.autoscaler.config
        return {
            "config": asdict(config), "cold_start_s": self.cold_start_s,
            "gpu_hours": gpu_s / 3600, "cost_usd": gpu_s / 3600 * self.price_per_hour_usd,
            "price_per_hour_usd": self.price_per_hour_usd,
            "replica_hours": {state: seconds / 3600 for state, seconds in self.replica_s.items()},
            "mean_replicas": gpu_s / simulated_s if simulated_s > 0 else None, "peak_replicas": self.peak_alive,
            "starts": sum(1 for action in self.actions if action["state"] == STARTING),
            "drains": sum(1 for action in self.actions if action["state"] == DRAINING),
            "timeline": self.changes, "decisions": self.decisions, "actions": self.actions,
        }
