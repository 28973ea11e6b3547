"""What one router holds (replicas, prefix index, policies, metrics, the HTTP client) and how it picks a
replica for each attempt of a request.

Replicas are reached only over HTTP (invariant 4): the OpenAI API, /health, /metrics and, where offered,
the KV-event feed. The routing policy is chosen per router (`policy`) or per request (header
x-fleetserve-policy); the session key comes from the x-session-id header or the body's `user` field, and
a per-request TTFT SLO from x-fleetserve-ttft-slo-ms.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import httpx

from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.disaggregation import check_role, decode_candidates
from fleetserve.fleet.health import HealthMonitor, probe_backend
from fleetserve.fleet.kv_feed import KVFeedFollower
from fleetserve.fleet.offline_hold import OfflineHold
from fleetserve.fleet.policies import Policy, available_policy_names, make_policy
from fleetserve.fleet.prefix_index import PrefixIndex
from fleetserve.fleet.replicas import (
    Replica,
    ReplicaRegistry,
    Ticket,
    default_replica_id,
    normalize_backend_url,
    parse_backend,
)
from fleetserve.fleet.request_info import PromptTokenizer, RoutedCall
from fleetserve.fleet.router_metrics import RouterMetrics
from fleetserve.fleet.snapshot import FleetSnapshot, RouteRequest
from fleetserve.wire.errors import bad_request, describe_error, model_not_found
from fleetserve.wire.model_probe import NotAnOpenAIServer, ServerUnreachable

logger = logging.getLogger("fleetserve.fleet")

POLICY_HEADER = "x-fleetserve-policy"
SESSION_HEADER = "x-session-id"
TTFT_SLO_HEADER = "x-fleetserve-ttft-slo-ms"
INDEX_EXPIRY_INTERVAL_S = 10.0


class Routing(NamedTuple):
    replica: Replica  # decodes the request (and prefills it, unless `prefill` does)
    cached_tokens: int  # of the prompt, expected cached on `replica`
    prefill: Replica | None = None  # where the disaggregation rule sends the prompt's prefill, if anywhere
    prefill_cached_tokens: int = 0


@dataclass
class RoutedTotals:
    """What the router has sent to the fleet since it started (first attempts only), for the autoscaler."""
    requests: int = 0
    uncached_prompt_tokens: int = 0
    max_output_tokens: int = 0


class RouterState:
    """Everything the endpoints share: replicas, prefix index, policies, metrics and the HTTP client."""

    def __init__(self, config: RouterConfig, tokenizer: PromptTokenizer | None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.registry = ReplicaRegistry()
        self.index = PrefixIndex(config.prefix_ttl_s)
        self.offline_hold = OfflineHold()
        self.metrics = RouterMetrics(lambda: self.registry, self.index, lambda: self.offline_hold.num_held)
        self.policies: dict[str, Policy] = {name: make_policy(name, config.policy_options)
                                            for name in available_policy_names(config.policy_options)}
        self.offline_gate = config.policy_options.offline_gate
        self._ids = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self._monitor: HealthMonitor | None = None
        self._feeds: KVFeedFollower | None = None
        self._expiry: asyncio.Task | None = None
        self._ejections: dict[str, asyncio.Event] = {}
        self.health_listeners: list[Callable[[Replica, str], None]] = []  # told of every ejection and admission
        self.routed = RoutedTotals()

    # --- life cycle -----------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the router is not started")
        return self._client

    async def start(self) -> None:
        timeout = httpx.Timeout(self.config.upstream_timeout_s, connect=self.config.connect_timeout_s)
        # No pool limit: a queue inside the client would hide load from the replicas and the policies.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False)
        self._monitor = HealthMonitor(self._client, self.config, self._health_changed)
        self._feeds = KVFeedFollower(self._client, self.index)
        self._expiry = asyncio.create_task(self._expire_index())
        for backend, role in self.config.backend_roles():
            url, pool = parse_backend(backend)
            await self.add_backend(url, pool=pool, role=role)

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._monitor is not None:
            await self._monitor.close()
        if self._feeds is not None:
            await self._feeds.close()
        if self._client is not None:
            await self._client.aclose()

    async def _expire_index(self) -> None:
        while True:
            await asyncio.sleep(INDEX_EXPIRY_INTERVAL_S)
            self.index.expire(time.monotonic())

    # --- membership -----------------------------------------------------------------------------------

    async def add_backend(self, url: str, replica_id: str | None = None, weight: float = 1.0,
                          pool: str | None = None, role: str = "mixed") -> Replica:
        """Register a backend. A bad URL (InvalidServerURL), a duplicate (DuplicateReplica) and a backend
        that answers but is not an OpenAI server (NotAnOpenAIServer) are refused; one that does not answer
        yet is registered unhealthy and joins once its health check passes."""
        root = normalize_backend_url(url)
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        check_role(role)
        if self.config.policy_options.routing_plan is not None:
            self.config.policy_options.routing_plan.check_pool(pool)
        replica = Replica(replica_id or default_replica_id(root), root, weight,
                          block_size=self.config.default_block_size, pool=pool, role=role)
        self.registry.add(replica)  # checks for duplicates before anything is sent
        try:
            replica.models = await probe_backend(self.client, root)
        except NotAnOpenAIServer:
            self.registry.remove(replica.replica_id)
            raise
        except ServerUnreachable as exc:
            replica.last_error = str(exc)
            logger.info("fleetserve router: %s; it joins once GET /health answers 200", exc)
        if replica.replica_id not in self.registry:
            raise ValueError(f"the replica {replica.replica_id!r} was removed while it was being added")
        assert self._monitor is not None and self._feeds is not None
        await self._monitor.check(replica)
        self._monitor.watch(replica)
        self._feeds.follow(replica)
        return replica

    async def remove_backend(self, replica_id: str) -> Replica:
        """Unregister a replica; requests already on it run to their end."""
        replica = self.registry.remove(replica_id)
        self._ejections.pop(replica_id, None)
        assert self._monitor is not None and self._feeds is not None
        await self._monitor.unwatch(replica_id)
        await self._feeds.stop(replica_id)
        logger.info("fleetserve router: removed replica %s (%s)", replica_id, replica.url)
        return replica

    def drain(self, replica_id: str) -> Replica:
        """Send the replica no new requests; those on it run to their end (UnknownReplica if none)."""
        replica = self.registry.get(replica_id)
        if not replica.draining:
            replica.draining = True
            logger.info("fleetserve router: draining replica %s (%s), %d request(s) in flight", replica_id,
                        replica.url, replica.in_flight + replica.offline_in_flight)
        return replica

    def ejection_of(self, replica: Replica) -> asyncio.Event:
        """Set when the replica is next ejected: requests still waiting on it then move elsewhere."""
        event = self._ejections.get(replica.replica_id)
        if event is None:
            event = self._ejections[replica.replica_id] = asyncio.Event()
        return event

    def _health_changed(self, replica: Replica, change: str) -> None:
        if change == "ejected":
            self._ejections.pop(replica.replica_id, asyncio.Event()).set()
            self.metrics.ejections.labels(replica.replica_id).inc()
            if replica.kv_feed != "streaming":
                self.index.clear(replica.replica_id)  # it may come back empty; a feed would tell, this cannot
            logger.warning("fleetserve router: ejected replica %s (%s): %s", replica.replica_id, replica.url,
                           replica.last_error)
        else:
            self.metrics.readmissions.labels(replica.replica_id).inc()
            logger.info("fleetserve router: replica %s (%s) is healthy", replica.replica_id, replica.url)
        for listener in self.health_listeners:
            listener(replica, change)

    # --- routing --------------------------------------------------------------------------------------

    def policy_for(self, headers: Mapping[str, str]) -> str:
        name = headers.get(POLICY_HEADER) or self.config.policy
        if name not in self.policies:
            raise bad_request(f"unknown routing policy {name!r} in the {POLICY_HEADER} header; choose one of "
                              f"{list(self.policies)} (bucket needs a router started with --plan)", POLICY_HEADER)
        return name

    def check_model(self, model: str | None) -> None:
        if model is None:
            return
        known = [r for r in self.registry if r.models]
        if known and not any(model in r.models for r in known) and len(known) == len(self.registry):
            raise model_not_found(model, self.served_models(healthy_only=False))

    def serves(self, replica: Replica, model: str | None) -> bool:
        return model is None or not replica.models or model in replica.models

    def served_models(self, healthy_only: bool = True) -> list[str]:
        names: dict[str, None] = {}
        for replica in self.registry:
            if replica.healthy or not healthy_only:
                names.update(dict.fromkeys(replica.models))
        return list(names)

    def model_clause(self, model: str | None) -> str:
        return f" serving the model {model!r}" if model else ""

    def describe_unhealthy(self) -> str:
        if not len(self.registry):
            return "no replicas are registered (add one with POST /admin/replicas)"
        return "; ".join(f"{r.replica_id} ({r.url}): {_why_not_serving(r)}" for r in self.registry)

    def describe_no_decoder(self, model: str | None) -> str | None:
        """Why no replica can decode although some are healthy: all of those are prefill replicas."""
        healthy = [r for r in self.registry if r.healthy and self.serves(r, model)]
        if not healthy or any(r.role != "prefill" for r in healthy):
            return None
        return (f"every healthy replica{self.model_clause(model)} is a prefill replica "
                f"({', '.join(r.replica_id for r in healthy)}), and prefill replicas only compute prompts for "
                f"decode replicas; add a decode or mixed replica (POST /admin/replicas with \"role\")")

    def choose(self, call: RoutedCall, policy_name: str, excluded: set[str],
               headers: Mapping[str, str]) -> Routing:
        """The replica for this attempt (never a prefill replica), the prompt tokens expected cached there,
        and the prefill replica the disaggregation rule sends its prompt to, if any; raises NoHealthyReplica
        when no healthy replica (serving the model) is left to decode it."""
        now = time.monotonic()
        candidates = [r for r in self.registry
                      if r.replica_id not in excluded and not r.draining and self.serves(r, call.model)]
        cached: dict[str, int] = {}
        for replica in candidates:
            blocks = self.index.cached_blocks(replica.replica_id, call.block_hashes(replica.block_size), now)
            cached[replica.replica_id] = min(blocks * replica.block_size, call.prompt_tokens)
        block_size = candidates[0].block_size if candidates else self.config.default_block_size
        request = RouteRequest(request_id=headers.get("x-request-id") or f"route-{next(self._ids)}",
                               prompt_tokens=call.prompt_tokens, max_tokens=call.max_output_tokens,
                               block_hashes=call.block_hashes(block_size), session_key=call.session_key,
                               ttft_slo_ms=ttft_slo_of(headers), offline=call.offline)
        snapshot = FleetSnapshot(tuple(r.state(cached[r.replica_id]) for r in candidates))
        decoders = decode_candidates(snapshot)
        # An offline request was let through the hold because a replica had room; on a retry there may be
        # none left, and then the routing policy places it.
        chosen = self.offline_gate.choose(request, decoders) if call.offline else None
        replica = self.registry.get(chosen or self.policies[policy_name].choose(request, decoders))
        decoder = next(r for r in decoders.replicas if r.replica_id == replica.replica_id)
        prefill_id = self.config.disaggregation.choose_prefill(request, decoder, snapshot)
        prefill = self.registry.get(prefill_id) if prefill_id is not None else None
        self.metrics.decisions.labels(policy_name, replica.replica_id).inc()
        self.metrics.prompt_tokens.labels(replica.replica_id).inc(call.prompt_tokens)
        self.metrics.prefix_hit_tokens.labels(replica.replica_id).inc(cached[replica.replica_id])
        self.record_routed(replica, call, now)
        if not excluded:
            self.routed.requests += 1
            self.routed.uncached_prompt_tokens += call.prompt_tokens - cached[replica.replica_id]
            self.routed.max_output_tokens += call.max_output_tokens
        return Routing(replica, cached[replica.replica_id], prefill,
                       cached[prefill.replica_id] if prefill is not None else 0)

    def record_routed(self, replica: Replica, call: RoutedCall, now: float) -> None:
        """The replica is about to hold the call's prompt in its prefix cache."""
        ttl = self.config.pending_ttl_s if replica.kv_feed == "streaming" else self.config.prefix_ttl_s
        self.index.routed(replica.replica_id, call.block_hashes(replica.block_size), now, ttl)

    async def hold_offline(self, call: RoutedCall) -> None:
        """Wait until some replica serving the call's model has room for offline work (see OfflineGate)."""
        def has_room() -> bool:
            return any(self.offline_gate.has_room(replica.state()) for replica in self.registry
                       if self.serves(replica, call.model) and replica.role != "prefill" and not replica.draining)

        waited = await self.offline_hold.wait_turn(has_room)
        if waited > 0:
            self.metrics.offline_held.inc()
            self.metrics.offline_held_seconds.inc(waited)

    def request_ended(self, replica: Replica, ticket: Ticket) -> None:
        replica.finish(ticket)
        self.offline_hold.notify()

    # --- failures seen by requests --------------------------------------------------------------------

    def attempt_failed(self, replica: Replica, exc: BaseException, stage: str) -> None:
        self.metrics.retries.labels(replica.replica_id, stage).inc()
        assert self._monitor is not None
        self._monitor.request_failed(replica, f"a request failed: {describe_error(exc)}",
                                     conclusive=isinstance(exc, httpx.ConnectError))

    def attempt_refused(self, replica: Replica, status: int) -> None:
        self.metrics.retries.labels(replica.replica_id, f"http_{status}").inc()
        if status != 429:  # 429 is a full queue, not a failure
            assert self._monitor is not None
            self._monitor.request_failed(replica, f"a request got HTTP {status}", conclusive=False)

    def prefill_failed(self, replica: Replica, reason: str, error: str, health: bool, conclusive: bool = False) -> None:
        """A remote prefill failed (`reason`, a metric label) and the decode replica prefills locally; `health`:
        the failure says the prefill replica is unwell, and counts like a failed health check."""
        self.metrics.prefill_fallbacks.labels(replica.replica_id, reason).inc()
        logger.warning("fleetserve router: remote prefill on %s failed (%s); prefilling on the decode replica",
                       replica.replica_id, error)
        if health:
            assert self._monitor is not None
            self._monitor.request_failed(replica, f"a remote prefill failed: {error}", conclusive)

    def stream_failed(self, replica: Replica, exc: BaseException) -> None:
        self.metrics.stream_failures.labels(replica.replica_id).inc()
        assert self._monitor is not None
        self._monitor.request_failed(replica, f"a stream broke: {describe_error(exc)}", conclusive=False)


def _why_not_serving(replica: Replica) -> str:
    if replica.draining:
        return "draining (takes no new requests)"
    return replica.last_error or "not checked yet"


def ttft_slo_of(headers: Mapping[str, str]) -> float | None:
    text = headers.get(TTFT_SLO_HEADER)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise bad_request(f"the {TTFT_SLO_HEADER} header must be a positive number of milliseconds, got {text!r}",
                          TTFT_SLO_HEADER)
    return value
