"""Follows each replica's KV-event stream (docs/kv_events.md) into the router's prefix index.

Every (re)connection starts from seq 0 with the replica's picture cleared: the replica keeps its last
4096 batches, so the replay rebuilds what it holds, and a replica that restarted (its seq began at 0
again) can never be mistaken for the old one. A replica that answers 404 offers no feed; the router
then relies on its own routing decisions (with a TTL) for that replica.
"""
from __future__ import annotations

import asyncio
import json
import logging

import httpx

from fleetserve.fleet.prefix_index import PrefixIndex
from fleetserve.fleet.replicas import Replica
from fleetserve.wire import paths
from fleetserve.wire.errors import describe_error

logger = logging.getLogger("fleetserve.fleet")

RECONNECT_DELAY_S = 0.5
# The replica sends a keep-alive comment every 15 s of silence; twice that without a byte means it is gone.
READ_TIMEOUT_S = 30.0


class KVFeedFollower:
    def __init__(self, client: httpx.AsyncClient, index: PrefixIndex) -> None:
        self.client = client
        self.index = index
        self._tasks: dict[str, asyncio.Task] = {}

    def follow(self, replica: Replica) -> None:
        self._tasks[replica.replica_id] = asyncio.create_task(self._loop(replica), name=f"kv feed {replica.replica_id}")

    async def stop(self, replica_id: str) -> None:
        task = self._tasks.pop(replica_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.index.clear(replica_id)

    async def close(self) -> None:
        for replica_id in list(self._tasks):
            await self.stop(replica_id)

    async def _loop(self, replica: Replica) -> None:
        while True:
            if replica.healthy:
                try:
                    if not await self._consume(replica):
                        replica.kv_feed = "none"
                        return
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    logger.debug("fleetserve router: KV feed of %s broke: %s", replica.replica_id, describe_error(exc))
            replica.kv_feed = "connecting"
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _consume(self, replica: Replica) -> bool:
        """Read the stream until it ends; False when the replica has no feed at all."""
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=2.0)
        async with self.client.stream("GET", replica.url + paths.KV_EVENTS_STREAM, params={"since": 0},
                                      timeout=timeout) as response:
            if response.status_code in (404, 405):
                return False
            if response.status_code != 200:
                return True  # loading or draining: try again later
            self.index.clear(replica.replica_id)
            header_seen = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = json.loads(line[5:])
                if not header_seen:
                    header_seen = True
                    replica.block_size = int(payload.get("block_size", replica.block_size))
                    replica.kv_feed = "streaming"
                    continue
                self.index.apply_events(replica.replica_id, payload["events"])
        return True
