"""The simulated fleet: requests arrive on a virtual clock, the live router's policy objects pick a replica
from a snapshot of every replica's load, and simulated replicas (the engine's own scheduler) serve them.

Each request yields a `RequestRecord` on the virtual clock (sent, first token, token times, end), the
same record the live benchmark fills, so the summary and plots come from the one metrics module.
Wake-ups due at the same moment as an arrival come after it: a request that arrives as a step ends
joins the next step.

In a fleet with replica roles, routing goes as in the live router: the policy picks the replica that
decodes among the decode and mixed ones (`decode_candidates`), then the disaggregation rule decides
whether a prefill replica computes the prompt (`DisaggregationRule.choose_prefill`). A remote prefill runs
on the prefill replica as a request of its own (max_tokens=1, counted on that replica's router as the live
router counts it), then its KV crosses the link (fleetserve.sim.kv_transfers), only the blocks the decode
replica does not hold; when it lands, the decode replica takes the request with its first token, which
the client has then. The request keeps one record, the client's. A prefill replica that refuses the
prefill (its queue full) leaves it to the decode replica. A fleet of mixed replicas only routes as before.

With a `SimAutoscaler` (fleetserve.sim.autoscaling) the autoscaler's decisions and cold starts are events
on the same clock, after the replica steps that end at the same moment; replicas it orders join the fleet
(`add_replica`), and the replay ends when the last request does, not at the autoscaler's next decision.
"""
from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.fleet.disaggregation import decode_candidates
from fleetserve.fleet.offline_gate import OfflineGate
from fleetserve.fleet.policies import Policy
from fleetserve.fleet.snapshot import FleetSnapshot, RouteRequest
from fleetserve.sim.block_hashes import request_block_hashes
from fleetserve.sim.config import Disaggregation
from fleetserve.sim.events import WakeupQueue
from fleetserve.sim.kv_transfers import KVTransfers, RemotePrefill
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


class FleetScaler(Protocol):
    """What the fleet asks of an autoscaler on its clock (fleetserve.sim.autoscaling.SimAutoscaler)."""
    next_s: float  # when it next has something to do

    def attach(self, fleet: SimFleet) -> None: ...
    def run(self, now: float) -> None: ...
    def went_idle(self, index: int, now: float) -> None: ...
    def routed(self, prompt_tokens: int, output_tokens: int) -> None: ...


@dataclass
class HeldRequest:
    """An offline request the router holds until a replica has room (fleetserve.fleet.offline_gate)."""
    request: Request
    route: RouteRequest
    record: RequestRecord
    held_s: float


class SimFleet:
    def __init__(self, replicas: list[SimReplica], policy: Policy, timeline: ReplicaTimeline | None = None,
                 offline_gate: OfflineGate | None = None, disaggregation: Disaggregation | None = None,
                 scaler: FleetScaler | None = None) -> None:
        """`disaggregation`: the rule and KV link of a fleet with prefill replicas (required there); `scaler`:
        an autoscaler for a fleet of mixed replicas of one hardware."""
        if not replicas:
            raise ValueError("a simulated fleet needs at least one replica")
        roles = {replica.role for replica in replicas}
        if roles == {"prefill"}:
            raise ValueError("a simulated fleet needs a decode or mixed replica besides its prefill replicas")
        if "prefill" in roles and disaggregation is None:
            raise ValueError("a fleet with prefill replicas needs a Disaggregation (its rule and KV link), e.g. "
                             "Disaggregation(KVLink.of('nvlink', model_config))")
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
        self.with_roles = roles != {"mixed"}
        self.disaggregation = disaggregation
        self.transfers = KVTransfers(disaggregation.link, len(replicas)) if disaggregation is not None else None
        self.scaler = scaler
        if scaler is not None:
            if self.with_roles or len({replica.hardware_name for replica in replicas}) > 1:
                raise ValueError("autoscaling needs a fleet of mixed replicas of one hardware, e.g. --fleet a100:2")
            scaler.attach(self)

    def add_replica(self, replica: SimReplica) -> int:
        """A replica joins the fleet (the autoscaler started it); returns its index."""
        index = len(self.replicas)
        if replica.replica_id in self.index_of:
            raise ValueError(f"replica id {replica.replica_id!r} is already in the fleet")
        self.replicas.append(replica)
        self.index_of[replica.replica_id] = index
        self.view.add_replica(replica)
        self.queue.add_owner()
        return index

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
        queue, replicas, view, transfers, scaler = self.queue, self.replicas, self.view, self.transfers, self.scaler
        while True:
            due = queue.peek_time()
            if scaler is not None and scaler.next_s < due:
                if due == math.inf and until == math.inf:  # the replay is over: no more decisions
                    return
                if scaler.next_s > until or (scaler.next_s == until and not inclusive):
                    return
                self.clock = scaler.next_s
                scaler.run(self.clock)
                continue
            if transfers and transfers.next_landing() <= due:  # a KV landing as a step ends joins the next step
                due = transfers.next_landing()
                if due > until or (due == until and not inclusive):
                    return
                self.clock = due
                self._land(transfers.pop(), due)
                continue
            if due > until or (due == until and not inclusive) or due == math.inf:
                return
            now, index = queue.pop()
            self.clock = now
            replica = replicas[index]
            extends_only = replica.extending_segment
            queue.set(index, replica.wake(now))
            if scaler is not None and replica.busy_until is None:
                scaler.went_idle(index, now)
            if not extends_only:
                view.touched(index)
                if replica.handoffs:
                    self._take_handoffs(replica, now)
                if self.held:
                    self._release_held(now)

    def _route(self, arrival: Arrival) -> RequestRecord:
        spec, now = arrival.spec, arrival.sent_s
        self.clock = now
        prompt, output = spec.prompt_tokens, spec.output_tokens
        block_size = self.block_size
        hashes, shared = request_block_hashes(spec, block_size, prompt + output, self._uid)
        self._uid += 1
        params = self._sampling_params(output, spec.priority, spec.service_class)
        request = Request(spec.request_id, [0] * prompt, params, NO_EOS, now, block_hashes=hashes)
        route = RouteRequest(spec.request_id, prompt, output, tuple(hashes[:prompt // block_size]),
                             session_key=spec.session_id, offline=params.offline)
        record = RequestRecord(spec.request_id, arrival.arrival_s, now, prompt_tokens=prompt,
                               service_class=spec.service_class, priority=spec.priority)
        if route.offline:
            # First come, first served: behind those already held.
            snapshot = self.view.snapshot([], now)
            replica_id = None if self.held else self.offline_gate.choose(route, self._decoders(snapshot))
            if replica_id is None:
                self.held.append(HeldRequest(request, route, record, now))
                self.num_held += 1
            else:
                self._place(request, route, record, replica_id, snapshot, now)
            return record
        if shared:
            self.view.expect_shared_blocks()
        # A prefix hit never covers the prompt's last token (the scheduler computes it for its logits).
        snapshot = self.view.snapshot(hashes[:min(shared, (prompt - 1) // block_size)], now)
        self._place(request, route, record, self.policy.choose(route, self._decoders(snapshot)), snapshot, now)
        return record

    def _sampling_params(self, max_tokens: int, priority: int, service_class: str) -> SamplingParams:
        key = (max_tokens, priority, service_class)
        params = self._params.get(key)
        if params is None:
            params = self._params[key] = SamplingParams(
                temperature=0.0, max_tokens=max_tokens, ignore_eos=True, priority=priority,
                service_class=service_class)
        return params

    def _decoders(self, snapshot: FleetSnapshot) -> FleetSnapshot:
        """The replicas a policy may choose to decode: all but the prefill ones."""
        return decode_candidates(snapshot) if self.with_roles else snapshot

    def _place(self, request: Request, route: RouteRequest, record: RequestRecord, decode_id: str,
               snapshot: FleetSnapshot, now: float) -> None:
        """Send the request to the replica chosen to decode it, its prompt first to a prefill replica when the
        disaggregation rule says so."""
        disaggregation, transfers = self.disaggregation, self.transfers
        if disaggregation is None or transfers is None or not self.with_roles:
            self._dispatch(request, route, record, decode_id, now)
            return
        decode_index = self._index(decode_id)
        prefill_id = disaggregation.rule.choose_prefill(route, snapshot.replicas[decode_index], snapshot)
        if prefill_id is None:
            transfers.stats.local_prefills += 1
            self._dispatch(request, route, record, decode_id, now)
        else:
            self._prefill_remotely(request, route, record, decode_index, self._index(prefill_id), now)

    def _index(self, replica_id: str) -> int:
        index = self.index_of.get(replica_id)
        if index is None:
            raise ValueError(f"policy {self.policy.name!r} chose {replica_id!r}, not a replica of this fleet")
        return index

    def _dispatch(self, request: Request, route: RouteRequest, record: RequestRecord, replica_id: str,
                  now: float) -> None:
        index = self._index(replica_id)
        if self.timeline is not None:
            self.timeline.routed_to(index)
        cached = self.view.cached_tokens.get(index, 0) if not route.offline else 0
        self._submit(index, request, route, record, cached, now)

    def _submit(self, index: int, request: Request, route: RouteRequest, record: RequestRecord, cached: int,
                now: float) -> None:
        replica = self.replicas[index]
        ticket = replica.router.begin(max(route.prompt_tokens - cached, 0), route.max_tokens, now,
                                      offline=route.offline)
        if self.scaler is not None:
            self.scaler.routed(max(route.prompt_tokens - cached, 0), route.max_tokens)
        wake = replica.submit(TrackedRequest(request, record, ticket), now)
        if wake is not None:
            self.queue.set(index, wake)
        self.view.touched(index)

    # --- disaggregated prefill ----------------------------------------------------------------------

    def _prefill_remotely(self, request: Request, route: RouteRequest, record: RequestRecord, decode_index: int,
                          prefill_index: int, now: float) -> None:
        """Send the prompt to the prefill replica as a request of its own; the decode replica counts the
        request from now on, without prefill work."""
        decode, prefill = self.replicas[decode_index], self.replicas[prefill_index]
        if self.timeline is not None:
            self.timeline.routed_to(decode_index)
            self.timeline.routed_to(prefill_index)
        decode_ticket = decode.router.begin(0, route.max_tokens, now, offline=route.offline)
        remote = RemotePrefill(request, route, record, decode_index, decode_ticket,
                               self.view.cached_tokens.get(decode_index, 0), prefill_index)
        params = self._sampling_params(1, request.priority, request.sampling_params.service_class)
        leg = Request(request.request_id, request.prompt_token_ids, params, NO_EOS, now,
                      block_hashes=request.block_hashes)
        cached = self.view.cached_tokens.get(prefill_index, 0)
        ticket = prefill.router.begin(max(route.prompt_tokens - cached, 0), 1, now, offline=route.offline)
        scratch = RequestRecord(request.request_id, record.arrival_s, now, prompt_tokens=route.prompt_tokens)
        wake = prefill.submit(TrackedRequest(leg, scratch, ticket, remote), now)
        if wake is not None:
            self.queue.set(prefill_index, wake)
        self.view.touched(prefill_index)
        self.view.touched(decode_index)
        if prefill.handoffs:  # refused at once
            self._take_handoffs(prefill, now)

    def _take_handoffs(self, replica: SimReplica, now: float) -> None:
        """The prefills this replica finished (or refused) for decode replicas: send their KV on (or leave the
        prompt to the decode replica)."""
        handoffs, replica.handoffs = replica.handoffs, []
        for tracked in handoffs:
            remote = tracked.handoff
            assert remote is not None
            if tracked.record.success:
                self._send_kv(remote, now)
            else:
                self._prefill_locally_after_refusal(remote, now)

    def _send_kv(self, remote: RemotePrefill, now: float) -> None:
        """Only the prompt's blocks the decode replica does not hold cross the link, as the live decode replica
        fetches only those."""
        transfers = self.transfers
        assert transfers is not None
        decode, request = self.replicas[remote.decode_index], remote.request
        prompt, block_size = request.num_prompt_tokens, self.block_size
        held = decode.kv.cached_prefix_length(request.block_hashes[:prompt // block_size]) * block_size
        transfers.stats.remote_prefills += 1
        transfers.start(remote, prompt - held, now)

    def _land(self, remote: RemotePrefill, now: float) -> None:
        """The KV has arrived: the decode replica takes the request with the prefill's first token."""
        index, request = remote.decode_index, remote.request
        request.output_token_ids.append(0)
        request.arrival_time = now  # as the live decode replica's engine stamps the decode request
        tracked = TrackedRequest(request, remote.record, remote.decode_ticket)
        wake = self.replicas[index].import_prefilled(tracked, request.num_prompt_tokens, now)
        if wake is not None:
            self.queue.set(index, wake)
        self.view.touched(index)

    def _prefill_locally_after_refusal(self, remote: RemotePrefill, now: float) -> None:
        transfers = self.transfers
        assert transfers is not None
        transfers.stats.fallbacks += 1
        transfers.stats.local_prefills += 1
        self.replicas[remote.decode_index].router.finish(remote.decode_ticket)
        self._submit(remote.decode_index, remote.request, remote.route, remote.record, remote.decode_cached, now)

    def _release_held(self, now: float) -> None:
        """Send held offline requests on, first come first served, while a replica has room."""
        while self.held:
            first = self.held[0]
            snapshot = self.view.snapshot([], now)
            replica_id = self.offline_gate.choose(first.route, self._decoders(snapshot))
            if replica_id is None:
                return
            self.held.popleft()
            self.held_s += now - first.held_s
            self._place(first.request, first.route, first.record, replica_id, snapshot, now)
