"""One simulated request as the fleet follows it: the engine's Request, its metrics record, and the
router's load ticket for it; for the prefill of a request decoded elsewhere, the remote prefill it serves."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.request import Request
from fleetserve.fleet.replicas import Ticket

if TYPE_CHECKING:
    from fleetserve.sim.kv_transfers import RemotePrefill


class TrackedRequest:
    __slots__ = ("handoff", "record", "request", "ticket")

    def __init__(self, request: Request, record: RequestRecord, ticket: Ticket,
                 handoff: RemotePrefill | None = None) -> None:
        self.request = request
        self.record = record
        self.ticket = ticket
        self.handoff = handoff  # set on a prefill replica: its KV goes on to this request's decode replica
