"""The live fleet's replicas over time, in the router's own process: starting them through a provider
(fleetserve.fleet.replica_provider), registering each with the router once its URL is known, asking the
autoscaler (fleetserve.fleet.autoscaler, the object the simulator calls too) every `interval_s` how many
there should be, and scaling in by draining.

A replica serves from its first passing health check; the time from the decision that started it to then
is recorded (fleetserve.fleet.scaling_metrics). A draining replica gets no new requests; once the router has
none of its requests in flight it is removed from the router and stopped (the provider's stop: it drains
whatever it still holds, then exits). This holds for replicas drained by the autoscaler and by an operator
(POST /admin/replicas/{id}/drain) alike. A replica that exits on its own leaves the router; the autoscaler
replaces it when the fleet falls below its bounds, and when every replica has exited the router stops.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import NamedTuple

from fleetserve.fleet.autoscaler import ArrivalCounts, Autoscaler, FleetLoad, ScaleDecision
from fleetserve.fleet.replica_provider import ReplicaProvider, StartedReplica
from fleetserve.fleet.replicas import Replica
from fleetserve.fleet.router_state import RouterState
from fleetserve.fleet.scaling_metrics import FleetLedger, register_fleet_metrics
from fleetserve.fleet.snapshot import FleetSnapshot

logger = logging.getLogger("fleetserve.fleet")

HOUSEKEEPING_S = 0.2  # how often starting, draining and exited replicas are looked at (decisions: interval_s)


class ReplicaSpec(NamedTuple):
    pool: str | None = None
    role: str = "mixed"


@dataclass
class ManagedReplica:
    """A replica this loop started, from its start until it has stopped."""
    started: StartedReplica
    ordered_at: float  # when the decision that started it was taken (time.monotonic())
    cause: str  # "initial" or "scale_up"
    registered_url: str = ""  # the URL the router knows it by ("" until registered)
    serving_at: float | None = None  # its first passing health check
    stopping: bool = False


class ScalingLoop:
    def __init__(self, router: RouterState, provider: ReplicaProvider, initial: Sequence[ReplicaSpec],
                 autoscaler: Autoscaler | None, stop_timeout_s: float, ledger: FleetLedger | None = None,
                 scale_spec: ReplicaSpec = ReplicaSpec(), on_fleet_gone: Callable[[], None] = lambda: None) -> None:
        self.router = router
        self.provider = provider
        self.initial = list(initial)
        self.autoscaler = autoscaler
        self.stop_timeout_s = stop_timeout_s
        self.ledger = ledger or FleetLedger()
        self.scale_spec = scale_spec  # what a scale-up starts
        self.on_fleet_gone = on_fleet_gone
        self.managed: dict[str, ManagedReplica] = {}
        self.unexpected_exits = 0
        self._stops: set[asyncio.Task] = set()
        self.decisions = register_fleet_metrics(router.metrics.registry, self.ledger, self.states)
        router.health_listeners.append(self._health_changed)

    # --- what the fleet looks like ---------------------------------------------------------------------

    def starting(self) -> list[ManagedReplica]:
        """Started, alive, not taking requests yet (or ejected and not back yet), not draining."""
        found = []
        for managed in self.managed.values():
            replica = self._registered(managed)
            if not managed.stopping and (replica is None or not (replica.healthy or replica.draining)):
                found.append(managed)
        return found

    def states(self) -> dict[str, int]:
        return {"serving": len(self.router.registry.serving()), "starting": len(self.starting()),
                "draining": sum(r.draining for r in self.router.registry)}

    def load(self, now: float) -> FleetLoad:
        serving = FleetSnapshot(tuple(r.state() for r in self.router.registry.serving()))
        counts = self.states()
        routed = self.router.routed
        arrived = ArrivalCounts(routed.requests, routed.uncached_prompt_tokens, routed.max_output_tokens)
        return FleetLoad(now, serving, starting=counts["starting"], draining=counts["draining"], arrived=arrived)

    def describe(self) -> dict:
        config = self.autoscaler.config if self.autoscaler is not None else None
        return {"autoscaler": asdict(config) if config is not None else None, "replicas": self.states(),
                **self.ledger.describe()}

    def _registered(self, managed: ManagedReplica) -> Replica | None:
        rid = managed.started.replica_id
        return self.router.registry.get(rid) if managed.registered_url and rid in self.router.registry else None

    # --- life cycle ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._run(), name="scaling loop")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        await self.start_replicas(self.initial, time.monotonic(), "initial")
        interval = self.autoscaler.config.interval_s if self.autoscaler is not None else None
        next_decision = time.monotonic() + (interval or 0)
        while True:
            try:
                await self.housekeeping()
                if self.autoscaler is not None and interval is not None and time.monotonic() >= next_decision:
                    next_decision = time.monotonic() + interval
                    await self.scale(self.autoscaler.decide(self.load(time.monotonic())))
            except Exception:  # noqa: BLE001 - a bug here must not stop the fleet's upkeep
                logger.exception("fleetserve: the scaling loop failed unexpectedly; it goes on")
            await asyncio.sleep(HOUSEKEEPING_S)

    def stop_all(self) -> None:
        """Stop every replica still running, in parallel (blocking; once the router's event loop is done)."""
        replicas = [m.started for m in self.managed.values()]
        if not replicas:
            return
        with ThreadPoolExecutor(len(replicas)) as pool:
            list(pool.map(lambda started: self.provider.stop(started, self.stop_timeout_s), replicas))
        now = time.monotonic()
        for started in replicas:
            self.ledger.replica_ended(started.replica_id, now)

    # --- acting ------------------------------------------------------------------------------------------

    async def scale(self, decision: ScaleDecision) -> None:
        self.ledger.desired, self.ledger.last_reason = decision.desired, decision.reason
        if not decision.acts:
            return
        now = time.monotonic()
        if decision.start:
            self.decisions.labels("up").inc()
            self.ledger.record("scale_up", desired=decision.desired, start=decision.start, reason=decision.reason)
            logger.info("fleetserve: scaling up by %d to %d replicas (%s)", decision.start, decision.desired,
                        decision.reason)
            await self.start_replicas([self.scale_spec] * decision.start, now, "scale_up")
        if decision.drain:
            self.decisions.labels("down").inc()
            self.ledger.record("scale_down", desired=decision.desired, drain=list(decision.drain),
                               reason=decision.reason)
            logger.info("fleetserve: scaling down to %d replicas, draining %s (%s)", decision.desired,
                        ", ".join(decision.drain), decision.reason)
            for replica_id in decision.drain:
                if replica_id in self.router.registry:
                    self.router.drain(replica_id)
                    self.ledger.record("draining", replica_id)

    async def start_replicas(self, specs: Sequence[ReplicaSpec], ordered_at: float, cause: str) -> None:
        for spec in specs:
            try:
                started = await asyncio.to_thread(self.provider.start, spec.pool, spec.role)
            except Exception as exc:  # noqa: BLE001 - one failed start must not stop the others
                logger.error("fleetserve: could not start a replica (%s): %s", cause, exc)
                self.ledger.record("start_failed", None, cause=cause, error=str(exc))
                continue
            self.managed[started.replica_id] = ManagedReplica(started, ordered_at, cause)
            self.ledger.replica_started(started.replica_id, started.pool, time.monotonic())
            self.ledger.record("started", started.replica_id, cause=cause, pool=started.pool, role=started.role)
        await self.housekeeping()

    async def housekeeping(self) -> None:
        for managed in list(self.managed.values()):
            if not managed.stopping:
                await self._follow(managed)
        for replica in self.router.registry:
            if replica.draining and replica.in_flight + replica.offline_in_flight == 0:
                await self._retire(replica)

    async def _follow(self, managed: ManagedReplica) -> None:
        """Register the replica once its URL is known (again, if the provider moved it), or see it has exited."""
        started = managed.started
        url, exited = await asyncio.to_thread(lambda: (self.provider.url_of(started), self.provider.exited(started)))
        if exited:
            await self._exited(managed)
            return
        if not url or url == managed.registered_url:
            return
        if managed.registered_url and started.replica_id in self.router.registry:
            await self.router.remove_backend(started.replica_id)  # restarted elsewhere
        try:
            await self.router.add_backend(url, started.replica_id, pool=started.pool, role=started.role)
        except Exception as exc:  # noqa: BLE001 - tried again at the next look
            logger.warning("fleetserve: could not register replica %s (%s) with the router: %s", started.replica_id,
                           url, exc)
            return
        managed.registered_url = url

    async def _exited(self, managed: ManagedReplica) -> None:
        replica_id = managed.started.replica_id
        del self.managed[replica_id]
        self.unexpected_exits += 1
        self.ledger.replica_ended(replica_id, time.monotonic())
        self.ledger.record("exited", replica_id)
        logger.error("fleetserve: replica %s exited on its own", replica_id)
        if replica_id in self.router.registry:
            await self.router.remove_backend(replica_id)
        if not self.managed:
            logger.error("fleetserve: every replica has exited; stopping the router")
            self.on_fleet_gone()

    async def _retire(self, replica: Replica) -> None:
        """A drained replica with nothing in flight leaves the router, and stops if this loop started it."""
        await self.router.remove_backend(replica.replica_id)
        managed = self.managed.get(replica.replica_id)
        self.ledger.record("removed", replica.replica_id)
        if managed is None:
            return
        managed.stopping = True
        task = asyncio.create_task(self._stop(managed), name=f"stop {replica.replica_id}")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _stop(self, managed: ManagedReplica) -> None:
        replica_id = managed.started.replica_id
        await asyncio.to_thread(self.provider.stop, managed.started, self.stop_timeout_s)
        self.managed.pop(replica_id, None)
        self.ledger.replica_ended(replica_id, time.monotonic())
        self.ledger.record("stopped", replica_id)
        logger.info("fleetserve: replica %s drained and stopped", replica_id)

    # --- health ------------------------------------------------------------------------------------------

    def _health_changed(self, replica: Replica, change: str) -> None:
        managed = self.managed.get(replica.replica_id)
        if change != "admitted" or managed is None or managed.serving_at is not None:
            return
        managed.serving_at = time.monotonic()
        seconds = managed.serving_at - managed.ordered_at
        self.ledger.record("serving", replica.replica_id, cause=managed.cause, seconds=round(seconds, 3))
        if managed.cause == "scale_up":
            self.ledger.scaled_up(seconds)
        logger.info("fleetserve: replica %s serving %.1fs after the %s decision", replica.replica_id, seconds,
                    "scale-up" if managed.cause == "scale_up" else "start")
