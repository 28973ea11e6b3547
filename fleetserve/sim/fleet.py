"""The simulated fleet: requests arrive on a virtual clock, the live router's policy objects pick a replica
from a snapshot of every replica's load, and simulated replicas (the engine's own scheduler) serve them.

Each request yields a `RequestRecord` on the virtual clock (sent, first token, token times, end), the
same record the live benchmark fills, so the summary and plots come from the one metrics module.
Wake-ups due at the same moment as an arrival come after it: a request that arrives as a step ends
joins the next step.
"""
from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policies import Policy
from fleetserve.fleet.snapshot import RouteRequest
from fleetserve.sim.block_hashes import request_block_hashes
from fleetserve.sim.events import WakeupQueue
from fleetserve.sim.replica import SimReplica
from fleetserve.sim.router_view import RouterView
from fleetserve.sim.timeline import ReplicaTimeline
from fleetserve.sim.tracked import TrackedRequest
from fleetserve.workload.spec import RequestSpec, Workload

NO_EOS: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Arrival:
    """One request to replay: its spec, when it was scheduled, and when it reaches the router."""
    spec: RequestSpec
    arrival_s: float
    sent_s: float


def workload_arrivals(workload: Workload) -> list[Arrival]:
    return [Arrival(spec, spec.arrival_s, spec.arrival_s) for spec in workload]


@dataclass
class HeldRequest:
    """An offline request the router holds until a replica has room (fleetserve.fleet.offline_gate)."""
    request: Request
    route: RouteRequest
    record: RequestRecord
    held_s: float


class SimFleet:
    def __init__(self, replicas: list[SimReplica], policy: Policy, timeline: ReplicaTimeline | None = None,
                 offline_gate: OfflineGate | None = None) -> None:
        if not replicas:
            raise ValueError("a simulated fleet needs at least one replica")
        block_sizes = {replica.kv.block_size for replica in replicas}
        if len(block_sizes) > 1:
            raise ValueError(f"every replica must use one KV block size, got {sorted(block_sizes)}")
        self.replicas = replicas
        self.policy = policy
        self.block_size = block_sizes.pop()
        self.index_of = {replica.replica_id: index for index, replica in enumerate(replicas)}
        if len(self.index_of) != len(replicas):
            raise ValueError("replica ids must be unique")
        prefix_views = {replica.options.prefix_view for replica in replicas}
        if len(prefix_views) > 1:
            raise ValueError(f"every replica must use one prefix view, got {sorted(prefix_views)}")
        self.view = RouterView(replicas, prefix_views.pop())
        self.queue = WakeupQueue(len(replicas))
        self.clock = 0.0
        self.timeline = timeline
        self._params: dict[tuple[int, int, str], SamplingParams] = {}
        self._uid = 0
        self.offline_gate = offline_gate or OfflineGate()
        self.held: deque[HeldRequest] = deque()
        self.num_held = 0  # offline requests that waited at the router
        self.held_s = 0.0  # and how long, in all

    def run(self, arrivals: Iterable[Arrival] | Workload) -> list[RequestRecord]:
        """Replay the arrivals (in order of sent time) to the end; returns one record per request."""
        if isinstance(arrivals, Workload):
            arrivals = workload_arrivals(arrivals)
        records: list[RequestRecord] = []
        # The replay makes no reference cycles (what it drops, reference counting frees), while the cyclic GC
        # would walk the replicas' millions of KV blocks and the growing list of records over and over (over
        # 5% of a large run, more as the run grows), so it is paused for the replay.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._replay(arrivals, records)
        finally:
            if gc_was_enabled:
                gc.enable()
        unfinished = [record.request_id for record in records if record.end_s is None]
        if unfinished:
            raise RuntimeError(f"simulation ended with {len(unfinished)} requests unfinished, e.g. {unfinished[:5]}")
        return records

    def _replay(self, arrivals: Iterable[Arrival], records: list[RequestRecord]) -> None:
        last_sent = float("-inf")
        for arrival in arrivals:
            if arrival.sent_s < last_sent:
                raise ValueError(f"arrivals must come in order of sent time; request "
                                 f"{arrival.spec.request_id!r} is sent at {arrival.sent_s} after {last_sent}")
            last_sent = arrival.sent_s
            self._advance(arrival.sent_s, inclusive=False)
            if self.timeline is not None:
                self.timeline.reached(arrival.sent_s)
            records.append(self._route(arrival))
        self._advance(float("inf"), inclusive=True)
        if self.timeline is not None:
            self.timeline.reached(self.clock, last=True)

    def _advance(self, until: float, inclusive: bool) -> None:
        """Run every replica wake-up before `until` (and at it, when inclusive)."""
        queue, replicas, view = self.queue, self.replicas, self.view
        while True:
            due = queue.peek_time()
            if due > until or (due == until and not inclusive) or due == math.inf:
                return
            now, index = queue.pop()
            self.clock = now
            replica = replicas[index]
            extends_only = replica.extending_segment
            queue.set(index, replica.wake(now))
            if not extends_only:
                view.touched(index)
                if self.held:
                    self._release_held(now)

    def _route(self, arrival: Arrival) -> RequestRecord:
        spec, now = arrival.spec, arrival.sent_s
        self.clock = now
        prompt, output = spec.prompt_tokens, spec.output_tokens
        block_size = self.block_size
        hashes, shared = request_block_hashes(spec, block_size, prompt + output, self._uid)
        self._uid += 1
        params_key = (output, spec.priority, spec.service_class)
        params = self._params.get(params_key)
        if params is None:
            params = self._params[params_key] = SamplingParams(
                temperature=0.0, max_tokens=output, ignore_eos=True, priority=spec.priority,
                service_class=spec.service_class)
        request = Request(spec.request_id, [0] * prompt, params, NO_EOS, now, block_hashes=hashes)
        route = RouteRequest(spec.request_id, prompt, output, tuple(hashes[:prompt // block_size]),
                             session_key=spec.session_id, offline=params.offline)
        record = RequestRecord(spec.request_id, arrival.arrival_s, now, prompt_tokens=prompt,
                               service_class=spec.service_class, priority=spec.priority)
        if route.offline:
            # First come, first served: behind those already held.
            replica_id = None if self.held else self.offline_gate.choose(route, self.view.snapshot([], now))
            if replica_id is None:
                self.held.append(HeldRequest(request, route, record, now))
                self.num_held += 1
            else:
                self._dispatch(request, route, record, replica_id, now)
            return record
        if shared:
            self.view.expect_shared_blocks()
        # A prefix hit never covers the prompt's last token (the scheduler computes it for its logits).
        snapshot = self.view.snapshot(hashes[:min(shared, (prompt - 1) // block_size)], now)
        self._dispatch(request, route, record, self.policy.choose(route, snapshot), now)
        return record

    def _dispatch(self, request: Request, route: RouteRequest, record: RequestRecord, replica_id: str,
                  now: float) -> None:
        index = self.index_of.get(replica_id)
        if index is None:
            raise ValueError(f"policy {self.policy.name!r} chose {replica_id!r}, not a replica of this fleet")
        replica = self.replicas[index]
        if self.timeline is not None:
            self.timeline.routed_to(index)
        cached = self.view.cached_tokens.get(index, 0) if not route.offline else 0
        ticket = replica.router.begin(max(route.prompt_tokens - cached, 0), route.max_tokens, now,
                                      offline=route.offline)
        wake = replica.submit(TrackedRequest(request, record, ticket), now)
        if wake is not None:
            self.queue.set(index, wake)
        self.view.touched(index)

    def _release_held(self, now: float) -> None:
        """Send held offline requests on, first come first served, while a replica has room."""
        while self.held:
            first = self.held[0]
            replica_id = self.offline_gate.choose(first.route, self.view.snapshot([], now))
            if replica_id is None:
                return
            self.held.popleft()
            self.held_s += now - first.held_s
            self._dispatch(first.request, first.route, first.record, replica_id, now)
