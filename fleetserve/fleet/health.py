"""Is a backend an OpenAI server, is it healthy, and what do its /metrics say.

`probe_backend` asks GET /v1/models once (when a backend is added). The monitor then checks every
replica every `health_interval_s`: GET /health (GET /v1/models for engines without /health) answering
200 within `health_timeout_s` passes. A refused connection ejects a replica at once (nothing listens
there); other failures (timeouts, 5xx, 503 while loading or draining) eject it after
`eject_after_failures` in a row. With the defaults (0.5 s, 0.75 s, 2) a replica that stops answering
is ejected within 2 s. The first passing check re-admits it. Replicas that offer /metrics are scraped
every `metrics_interval_s` while healthy.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import httpx

from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.replica_metrics import read_replica_metrics
from fleetserve.fleet.replicas import Replica
from fleetserve.wire import paths
from fleetserve.wire.errors import describe_error
from fleetserve.wire.model_probe import ModelProbeError, probe_models

logger = logging.getLogger("fleetserve.fleet")

_BODY_CHARS = 200
PROBE_TIMEOUT_S = 5.0


async def probe_backend(client: httpx.AsyncClient, root: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
    """The backend's models from GET /v1/models; raises ServerUnreachable or NotAnOpenAIServer naming it."""
    return await probe_models(client, root, timeout_s, "the backend")


class HealthMonitor:
    """One task per replica: health checks, metrics scrapes, and a wake-up when a request saw it fail."""

    def __init__(self, client: httpx.AsyncClient, config: RouterConfig,
                 on_change: Callable[[Replica, str], None]) -> None:
        self.client = client
        self.config = config
        self.on_change = on_change  # (replica, "ejected" | "admitted")
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._health_path: dict[str, str] = {}
        self._scrape: dict[str, bool] = {}

    def watch(self, replica: Replica) -> None:
        self._wake[replica.replica_id] = asyncio.Event()
        self._tasks[replica.replica_id] = asyncio.create_task(self._loop(replica), name=f"health {replica.replica_id}")

    async def unwatch(self, replica_id: str) -> None:
        task = self._tasks.pop(replica_id, None)
        for state in (self._wake, self._health_path, self._scrape):
            state.pop(replica_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for replica_id in list(self._tasks):
            await self.unwatch(replica_id)

    def request_failed(self, replica: Replica, error: str, conclusive: bool) -> None:
        """A request to this replica failed: count it like a failed check and check again at once."""
        if replica.check_failed(error, self.config.eject_after_failures, conclusive):
            self.on_change(replica, "ejected")
        wake = self._wake.get(replica.replica_id)
        if wake is not None:
            wake.set()

    async def _loop(self, replica: Replica) -> None:
        every = max(1, round(self.config.metrics_interval_s / self.config.health_interval_s))
        tick = 0
        wake = self._wake[replica.replica_id]
        while True:
            try:
                await self.check(replica)
                if replica.healthy and self._scrape.get(replica.replica_id, True) and tick % every == 0:
                    await self.scrape(replica)
            except Exception:  # noqa: BLE001 - a bug here must not stop the checks
                logger.exception("fleetserve router: health check of %s failed unexpectedly", replica.replica_id)
            tick += 1
            try:
                await asyncio.wait_for(wake.wait(), self.config.health_interval_s)
            except asyncio.TimeoutError:
                pass
            wake.clear()

    async def check(self, replica: Replica) -> None:
        path = self._health_path.setdefault(replica.replica_id, paths.HEALTH)
        try:
            response = await self.client.get(replica.url + path, timeout=self.config.health_timeout_s)
        except httpx.HTTPError as exc:
            conclusive = isinstance(exc, httpx.ConnectError)
            self._failed(replica, f"GET {path} failed: {describe_error(exc)}", conclusive)
            return
        if response.status_code == 404 and path == paths.HEALTH:
            self._health_path[replica.replica_id] = paths.MODELS  # an engine without /health
            return
        if response.status_code != 200:
            self._failed(replica, f"GET {path} answered HTTP {response.status_code}: "
                                  f"{response.text[:_BODY_CHARS]}", False)
            return
        if not replica.healthy:
            await self._refresh_models(replica)
        if replica.check_passed():
            self.on_change(replica, "admitted")

    def _failed(self, replica: Replica, error: str, conclusive: bool) -> None:
        if replica.check_failed(error, self.config.eject_after_failures, conclusive):
            self.on_change(replica, "ejected")

    async def _refresh_models(self, replica: Replica) -> None:
        try:
            replica.models = await probe_backend(self.client, replica.url, self.config.health_timeout_s * 4)
        except ModelProbeError as exc:
            logger.warning("fleetserve router: %s", exc)

    async def scrape(self, replica: Replica) -> None:
        try:
            response = await self.client.get(replica.url + paths.METRICS, timeout=self.config.health_timeout_s)
        except httpx.HTTPError:
            return  # the health check speaks for reachability
        if response.status_code == 404:
            self._scrape[replica.replica_id] = False
            return
        if response.status_code != 200:
            return
        values = read_replica_metrics(response.text)
        if "block_size" in values and values["block_size"] >= 1:
            replica.block_size = int(values.pop("block_size"))
        replica.reported = values
