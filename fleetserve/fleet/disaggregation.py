"""Whether a request's prompt is prefilled on a prefill replica and its KV sent to the decode replica, or
prefilled where it decodes: the prefill/decode decision, one object for the live router and the simulator.

Replicas have a role (`ROLES`): `prefill` replicas only compute prompts and hand their KV on, `decode`
replicas decode and may prefill locally, `mixed` replicas do both and are never sent a remote prefill (a
fleet without roles is all mixed). The routing policy first picks the replica that decodes, among the
decode and mixed ones; then `choose_prefill` decides, after Dynamo's disaggregated router:

- `conditional`: remote only when the part of the prompt the decode replica does not hold in its prefix
  cache is longer than `min_remote_prefill_tokens` (a short prompt costs less to prefill locally than to
  transfer) and the prefill replica with the least queued prompt work has fewer than
  `max_prefill_queue` requests in flight (a backed-up prefill pool would only add queueing);
- `always`: static disaggregation, every prompt goes to a prefill replica while one is healthy;
- `never`: colocated, every prompt is prefilled where it decodes.

The decision only applies to a decode replica whose role is `decode`; it returns the chosen prefill
replica's id, or None for a local prefill.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fleetserve.fleet.policy_basics import tie_break, uncached_tokens
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest

ROLES = ("mixed", "prefill", "decode")
DisaggregationMode = Literal["conditional", "always", "never"]
MODES = ("conditional", "always", "never")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown replica role {role!r}; choose one of {list(ROLES)}")
    return role


@dataclass(frozen=True)
class DisaggregationRule:
    mode: DisaggregationMode = "conditional"
    # Dynamo's defaults: max_local_prefill_length 1000 tokens, max_prefill_queue_size 2.
    min_remote_prefill_tokens: int = 1000
    max_prefill_queue: int = 2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown disaggregation mode {self.mode!r}; choose one of {list(MODES)}")
        if self.min_remote_prefill_tokens < 0:
            raise ValueError(f"min_remote_prefill_tokens must be >= 0, got {self.min_remote_prefill_tokens}")
        if self.max_prefill_queue < 1:
            raise ValueError(f"max_prefill_queue must be >= 1, got {self.max_prefill_queue}")

    def choose_prefill(self, request: RouteRequest, decode: ReplicaState, snapshot: FleetSnapshot) -> str | None:
        """The prefill replica for this request, given the replica chosen to decode it; None: prefill there."""
        if self.mode == "never" or decode.role != "decode":
            return None
        prefills = [r for r in snapshot.replicas if r.healthy and r.role == "prefill"]
        if not prefills:
            return None
        best = min(prefills, key=lambda r: (r.waiting_prefill_tokens / max(r.weight, 1e-9)
                                            + uncached_tokens(request, r), r.in_flight, tie_break(request, r)))
        if self.mode == "always":
            return best.replica_id
        if uncached_tokens(request, decode) <= self.min_remote_prefill_tokens:
            return None
        return best.replica_id if best.in_flight < self.max_prefill_queue else None


def decode_candidates(snapshot: FleetSnapshot) -> FleetSnapshot:
    """The replicas a routing policy may pick to decode a request: all but the prefill ones."""
    return FleetSnapshot(tuple(r for r in snapshot.replicas if r.role != "prefill"))
