"""How many replicas a fleet should have: one decision object for the live fleet and the simulated one.

Every `interval_s` the caller (the live launcher's scaling loop, or the simulator on its clock) hands the
autoscaler a snapshot of the replicas that serve (the routing snapshot, fleetserve.fleet.snapshot) and how
many are starting or draining; it answers how many to start and which to drain. Replicas still starting
count as capacity already ordered, so a cold start longer than the interval does not stack extra replicas.

Policies:
- `target`: Ray Serve's rule: enough replicas that each has `target_ongoing_requests` requests in flight.
- `slo`: predicts TTFT and TPOT per replica count from the performance model and the queue, and picks the
  fewest replicas that hold the SLO (fleetserve.fleet.autoscale_slo). It needs the traffic: the caller
  passes cumulative counts of what it routed (`FleetLoad.arrived`), and the autoscaler turns them into a
  rate and mean lengths over the last `rate_window_s` (`TrafficWindow`). It scales out on the latest
  count but in only on the highest count it wanted over the last `SCALE_IN_HOLD_WINDOWS` rate windows: a
  rate estimated over a short window swings, and a replica drained on a dip and started again on the next
  rise costs its cold start and its drain for nothing.

A change of the desired count must persist for `upscale_delay_s` (`downscale_delay_s` to shrink) before
it is acted on (a dip back resets the wait), and no action follows another within `cooldown_s`. Scaling
in drains: the replica takes no new requests, finishes its own, then stops; no replica drains while others
are still starting, which would leave the fleet short in between.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from fleetserve.fleet.autoscale_slo import SLOPredictor, SLOTarget, Traffic, slo_desired
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState

POLICIES = ("target", "slo")
RECENT_SHARE = 3  # the traffic's rate is the higher of the window's and its last 1/RECENT_SHARE's
SCALE_IN_HOLD_WINDOWS = 2  # `slo`: the count to shrink to is the highest wanted over this many rate windows


@dataclass(frozen=True)
class AutoscalerConfig:
    policy: str = "target"
    min_replicas: int = 1
    max_replicas: int = 4
    interval_s: float = 5.0  # how often the fleet is looked at
    target_ongoing_requests: float = 2.0  # `target`: requests in flight per replica (Ray Serve's default)
    upscale_delay_s: float = 10.0  # a higher desired count must hold this long before replicas start
    downscale_delay_s: float = 60.0  # a lower one this long before replicas drain
    cooldown_s: float = 0.0  # at least this long between two scaling actions
    ttft_slo_ms: float | None = None  # `slo`: the targets the policy holds
    tpot_slo_ms: float | None = None
    slo_headroom: float = 0.7  # `slo`: predicted mean TTFT must stay under this share of its target (the tail is above)
    rate_window_s: float = 30.0  # `slo`: the traffic is measured over this much of the recent past

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"autoscaling policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas} and "
                             f"{self.max_replicas}")
        for name in ("interval_s", "target_ongoing_requests", "rate_window_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.slo_headroom <= 1:
            raise ValueError(f"slo_headroom must be in (0, 1], got {self.slo_headroom}")
        for name in ("upscale_delay_s", "downscale_delay_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.policy == "slo" and self.ttft_slo_ms is None and self.tpot_slo_ms is None:
            raise ValueError("the slo policy needs a TTFT or TPOT target (ttft_slo_ms, tpot_slo_ms)")


@dataclass(frozen=True)
class ArrivalCounts:
    """What the router has sent to the fleet since it started (cumulative counters)."""
    requests: int = 0
    prompt_tokens: int = 0  # uncached prompt tokens, as the router counts a request's prefill work
    output_tokens: int = 0  # the requests' max_tokens


@dataclass(frozen=True)
class FleetLoad:
    """What the autoscaler looks at: the serving replicas, and the ones on their way in or out."""
    now: float
    serving: FleetSnapshot  # replicas taking requests (healthy, not draining)
    starting: int = 0  # started, not serving yet
    draining: int = 0  # finishing their requests before they stop (not counted as capacity)
    arrived: ArrivalCounts | None = None  # for `slo`: without it, the policy sees the queue alone


class TrafficWindow:
    """Turns the cumulative counts of successive loads into the traffic over the last `window_s`."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, ArrivalCounts]] = deque()

    def observe(self, now: float, counts: ArrivalCounts | None) -> Traffic:
        if counts is None:
            return Traffic()
        samples = self._samples
        samples.append((now, counts))
        while len(samples) > 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()
        since, first = samples[0]
        if now <= since:
            return Traffic()
        requests = counts.requests - first.requests
        if requests <= 0:
            return Traffic()
        rate = requests / (now - since)
        # A rise shows first in the latest part of the window: scaling up should not wait for the average.
        recent_since, recent = next(((t, c) for t, c in samples if t >= now - self.window_s / RECENT_SHARE),
                                    samples[-1])
        if now > recent_since:
            rate = max(rate, (counts.requests - recent.requests) / (now - recent_since))
        return Traffic(rate, (counts.prompt_tokens - first.prompt_tokens) / requests,
                       (counts.output_tokens - first.output_tokens) / requests)


@dataclass(frozen=True)
class ScaleDecision:
    desired: int  # the replica count the policy wants now (serving + starting), within the bounds
    start: int = 0  # replicas to start now
    drain: tuple[str, ...] = ()  # serving replicas to drain now
    reason: str = ""

    @property
    def acts(self) -> bool:
        return self.start > 0 or bool(self.drain)


def target_desired(config: AutoscalerConfig, load: FleetLoad) -> tuple[int, str]:
    ongoing = sum(r.in_flight + r.offline_in_flight for r in load.serving.replicas)
    desired = math.ceil(ongoing / config.target_ongoing_requests)
    return desired, f"{ongoing} requests in flight, target {config.target_ongoing_requests:g} per replica"


def least_loaded_first(replicas: tuple[ReplicaState, ...], count: int) -> tuple[str, ...]:
    """The replicas to drain: those with the least work left, so they stop soonest."""
    order = sorted(replicas, key=lambda r: (r.in_flight + r.offline_in_flight, r.queued_work_tokens, r.replica_id))
    return tuple(r.replica_id for r in order[:count])


class Autoscaler:
    def __init__(self, config: AutoscalerConfig, slo_model: object | None = None) -> None:
        """`slo_model`: for the slo policy, an `SLOPredictor` (fleetserve.fleet.autoscale_slo) built from the
        replicas' performance model and the engine's token budget."""
        self.config = config
        self.slo_model = slo_model
        if config.policy == "slo" and not isinstance(slo_model, SLOPredictor):
            raise ValueError("the slo autoscaling policy needs an SLOPredictor built from the replicas' "
                             "performance model: Autoscaler(config, SLOPredictor(perf, max_num_batched_tokens, "
                             "max_num_seqs))")
        self.traffic = TrafficWindow(config.rate_window_s)
        self._wanted_since: tuple[int, float] | None = None  # (direction, since when) of a pending change
        self._last_action_s = -math.inf
        self._recent_wanted: deque[tuple[float, int]] = deque()  # `slo`: (when, count wanted), for scaling in

    @property
    def pending(self) -> tuple[int, float] | None:
        """A change the policy wants but the delays hold back: (+1 up or -1 down, wanted since), or None."""
        return self._wanted_since

    def desired(self, load: FleetLoad) -> tuple[int, str]:
        traffic = self.traffic.observe(load.now, load.arrived)
        if self.config.policy == "target":
            wanted, reason = target_desired(self.config, load)
        else:
            config = self.config
            wanted, reason = slo_desired(SLOTarget(config.ttft_slo_ms, config.tpot_slo_ms, config.slo_headroom),
                                         (config.min_replicas, config.max_replicas), load.serving, self.slo_model,
                                         traffic, config.rate_window_s)
            wanted, reason = self._held(load.now, wanted, reason)
        return min(max(wanted, self.config.min_replicas), self.config.max_replicas), reason

    def _held(self, now: float, wanted: int, reason: str) -> tuple[int, str]:
        """The highest count wanted over the hold: scaling out follows the latest, scaling in the hold's peak."""
        recent = self._recent_wanted
        recent.append((now, wanted))
        while recent[0][0] <= now - SCALE_IN_HOLD_WINDOWS * self.config.rate_window_s:
            recent.popleft()
        held = max(count for _, count in recent)
        if held > wanted:
            return held, f"{reason}; holding {held} (wanted within the last " \
                         f"{SCALE_IN_HOLD_WINDOWS * self.config.rate_window_s:g}s)"
        return wanted, reason

    def decide(self, load: FleetLoad) -> ScaleDecision:
        config = self.config
        desired, reason = self.desired(load)
        current = len(load.serving.replicas) + load.starting
        direction = (desired > current) - (desired < current)
        if direction == 0:
            self._wanted_since = None
            return ScaleDecision(desired, reason=reason)
        if self._wanted_since is None or self._wanted_since[0] != direction:
            self._wanted_since = (direction, load.now)
        delay = config.upscale_delay_s if direction > 0 else config.downscale_delay_s
        waited = load.now - self._wanted_since[1]
        if waited < delay or load.now - self._last_action_s < config.cooldown_s:
            return ScaleDecision(desired, reason=f"{reason}; waiting ({waited:.1f}s of {delay:g}s delay)")
        if direction < 0 and load.starting:
            # Draining serving replicas while others still start would leave the fleet short in between.
            return ScaleDecision(desired, reason=f"{reason}; waiting for {load.starting} starting replicas")
        self._wanted_since = None
        self._last_action_s = load.now
        if direction > 0:
            return ScaleDecision(desired, start=desired - current, reason=reason)
        # Replicas still starting are not drained: shrinking stops at the serving ones.
        surplus = min(current - desired, len(load.serving.replicas))
        return ScaleDecision(desired, drain=least_loaded_first(load.serving.replicas, surplus), reason=reason)
