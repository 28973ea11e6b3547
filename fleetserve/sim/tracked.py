"""One simulated request as the fleet follows it: the engine's Request, its metrics record, and the
router's load ticket for it."""
from __future__ import annotations

from fleetserve.bench.metrics import RequestRecord
from fleetserve.engine.request import Request
from fleetserve.fleet.replicas import Ticket


class TrackedRequest:
    __slots__ = ("request", "record", "ticket")

    def __init__(self, request: Request, record: RequestRecord, ticket: Ticket) -> None:
        self.request = request
        self.record = record
        self.ticket = ticket
