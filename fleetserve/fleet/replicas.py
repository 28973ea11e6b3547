"""The replicas behind the router: where they are, whether they are healthy, and how much work each has.

Load comes first from the request lifecycle the router sees itself (requests in flight, prompt tokens
waiting for prefill until the first byte comes back, output tokens still to decode), and where a replica
offers them, from its /metrics (requests running and waiting, KV-cache usage) scraped by the health
monitor. A replica's prefill speed is learnt from the same lifecycle: the time to the first byte of a
streamed answer covers the prefill queued ahead of the request plus its own uncached tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fleetserve.fleet.snapshot import ReplicaState
from fleetserve.wire.urls import server_root

SPEED_SMOOTHING = 0.2  # weight of the newest sample in the prefill-speed moving average
MIN_SPEED_SAMPLE_TOKENS = 16  # shorter prefills time mostly overhead, not prefill
BACKEND_WITH_POOL = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)")  # a URL's scheme has ':', a pool name not


def normalize_backend_url(url: str) -> str:
    """The server root (people paste OpenAI base URLs); raises InvalidServerURL."""
    return server_root(url, "backend URL")


def parse_backend(spec: str) -> tuple[str, str | None]:
    """(url, pool) from a `--backend`: a URL, or POOL=URL to name the replica's hardware pool (a100=http://...)."""
    match = BACKEND_WITH_POOL.fullmatch(spec.strip())
    return (match.group(2), match.group(1)) if match else (spec, None)


def default_replica_id(url: str) -> str:
    return urlsplit(url).netloc


@dataclass(slots=True)  # compact: the simulator keeps thousands in flight
class Ticket:
    """One request's share of a replica's load, from routing until its answer ends."""
    prefill_tokens: int
    decode_tokens: int
    sent_at: float
    queued_prefill_at_send: int
    prefilling: bool = True
    closed: bool = False
    offline: bool = False


@dataclass
class Replica:
    replica_id: str
    url: str
    weight: float = 1.0
    block_size: int = 16
    prefill_tokens_per_s: float = 0.0
    healthy: bool = False
    consecutive_failures: int = 0
    last_error: str | None = None
    models: list[str] = field(default_factory=list)
    in_flight: int = 0  # online requests; the tokens below are theirs too
    waiting_prefill_tokens: int = 0
    decoding_tokens: int = 0
    offline_in_flight: int = 0  # offline requests yield to online ones in the replica, so they count apart
    reported: dict[str, float] = field(default_factory=dict)  # from the replica's /metrics
    kv_feed: str = "connecting"  # "connecting", "streaming", or "none" when the replica offers no feed
    pool: str | None = None  # hardware pool, as a routing plan names it
    role: str = "mixed"  # "mixed", "prefill" or "decode" (fleetserve.fleet.disaggregation)
    draining: bool = False  # takes no new requests; finishes those it has, then leaves the fleet

    @property
    def takes_requests(self) -> bool:
        return self.healthy and not self.draining

    # --- request lifecycle -------------------------------------------------------------------------

    def begin(self, prefill_tokens: int, decode_tokens: int, now: float, offline: bool = False) -> Ticket:
        if offline:
            self.offline_in_flight += 1
            return Ticket(0, 0, now, self.waiting_prefill_tokens, offline=True)
        ticket = Ticket(prefill_tokens, decode_tokens, now, self.waiting_prefill_tokens)
        self.in_flight += 1
        self.waiting_prefill_tokens += prefill_tokens
        self.decoding_tokens += decode_tokens
        return ticket

    def first_byte(self, ticket: Ticket, now: float, learn_speed: bool = True) -> None:
        if not ticket.prefilling or ticket.closed:
            return
        ticket.prefilling = False
        self.waiting_prefill_tokens -= ticket.prefill_tokens
        elapsed = now - ticket.sent_at
        work = ticket.queued_prefill_at_send + ticket.prefill_tokens
        if learn_speed and elapsed > 0 and ticket.prefill_tokens >= MIN_SPEED_SAMPLE_TOKENS:
            sample = work / elapsed
            self.prefill_tokens_per_s = (sample if self.prefill_tokens_per_s <= 0 else
                                         (1 - SPEED_SMOOTHING) * self.prefill_tokens_per_s + SPEED_SMOOTHING * sample)

    def progress(self, ticket: Ticket, tokens: int) -> None:
        """`tokens` more output tokens (streamed events) arrived for this request."""
        done = min(tokens, ticket.decode_tokens)
        if done > 0 and not ticket.closed:
            ticket.decode_tokens -= done
            self.decoding_tokens -= done

    def finish(self, ticket: Ticket) -> None:
        if ticket.closed:
            return
        ticket.closed = True
        if ticket.offline:
            self.offline_in_flight -= 1
            return
        if ticket.prefilling:
            self.waiting_prefill_tokens -= ticket.prefill_tokens
        self.decoding_tokens -= ticket.decode_tokens
        self.in_flight -= 1

    # --- health ---------------------------------------------------------------------------------------

    def check_passed(self) -> bool:
        """Record a good health check; True when this re-admits the replica."""
        self.consecutive_failures = 0
        self.last_error = None
        admitted = not self.healthy
        self.healthy = True
        return admitted

    def check_failed(self, error: str, eject_after: int, conclusive: bool = False) -> bool:
        """Record a failed check (or a failed request); True when this ejects the replica. A conclusive
        failure (connection refused: nothing listens there) ejects at once."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.healthy and (conclusive or self.consecutive_failures >= eject_after):
            self.healthy = False
            return True
        return False

    # --- views ----------------------------------------------------------------------------------------

    def state(self, cached_prefix_tokens: int = 0) -> ReplicaState:
        return ReplicaState(replica_id=self.replica_id, healthy=self.healthy, in_flight=self.in_flight,
                            offline_in_flight=self.offline_in_flight,
                            waiting_prefill_tokens=max(self.waiting_prefill_tokens, 0),
                            decoding_tokens=max(self.decoding_tokens, 0),
                            kv_usage=self.reported.get("kv_usage", 0.0), block_size=self.block_size,
                            cached_prefix_tokens=cached_prefix_tokens,
                            prefill_tokens_per_s=self.prefill_tokens_per_s, weight=self.weight, pool=self.pool,
                            role=self.role)

    def describe(self) -> dict:
        return {"id": self.replica_id, "url": self.url, "pool": self.pool, "role": self.role, "healthy": self.healthy,
                "draining": self.draining, "weight": self.weight, "models": list(self.models),
                "in_flight": self.in_flight,
                "offline_in_flight": self.offline_in_flight,
                "waiting_prefill_tokens": self.waiting_prefill_tokens, "decoding_tokens": self.decoding_tokens,
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1), "block_size": self.block_size,
                "kv_feed": self.kv_feed, "reported": dict(self.reported), "last_error": self.last_error,
                "consecutive_failures": self.consecutive_failures}


class UnknownReplica(KeyError):
    pass


class DuplicateReplica(ValueError):
    """A replica's id or URL is already registered."""


class ReplicaRegistry:
    """The replicas by id, in the order they were added."""

    def __init__(self) -> None:
        self._replicas: dict[str, Replica] = {}

    def __len__(self) -> int:
        return len(self._replicas)

    def __iter__(self):
        return iter(list(self._replicas.values()))

    def __contains__(self, replica_id: str) -> bool:
        return replica_id in self._replicas

    def get(self, replica_id: str) -> Replica:
        try:
            return self._replicas[replica_id]
        except KeyError:
            raise UnknownReplica(f"no replica {replica_id!r}; known replicas: {list(self._replicas)}") from None

    def by_url(self, url: str) -> Replica | None:
        root = normalize_backend_url(url)
        return next((r for r in self._replicas.values() if r.url == root), None)

    def add(self, replica: Replica) -> Replica:
        if replica.replica_id in self._replicas:
            raise DuplicateReplica(f"a replica with id {replica.replica_id!r} is already registered "
                                   f"({self._replicas[replica.replica_id].url})")
        same_url = self.by_url(replica.url)
        if same_url is not None:
            raise DuplicateReplica(f"the backend {replica.url} is already registered as {same_url.replica_id!r}")
        self._replicas[replica.replica_id] = replica
        return replica

    def remove(self, replica_id: str) -> Replica:
        replica = self.get(replica_id)
        del self._replicas[replica_id]
        return replica

    def healthy(self) -> list[Replica]:
        return [r for r in self._replicas.values() if r.healthy]

    def serving(self) -> list[Replica]:
        """The replicas that take new requests: healthy and not draining."""
        return [r for r in self._replicas.values() if r.takes_requests]
