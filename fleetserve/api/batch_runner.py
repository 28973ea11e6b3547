"""The batch runner: an asyncio task beside the app that takes batches from validating to a final status.

    validating ──▶ in_progress ──▶ finalizing ──▶ completed
        │               │ (cancel)        ╰──────▶ expired (past expires_at; unanswered lines: batch_expired)
        ╰▶ failed       ╰──▶ cancelling ──▶ cancelled (the lines answered so far)

Lines run through the app itself (batch_execution), so the runner needs only an ASGI app with the OpenAI
endpoints and GET /health: the replica's server or the fleet router alike. Every step is stored before the
next begins, so a restarted server picks each unfinished batch up where it was. Where several processes
share one database only the holder of its runner lock runs lines; the others look again every poll interval.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import httpx

from fleetserve.api.batch_config import BatchOptions
from fleetserve.api.batch_execution import in_process_client, run_lines
from fleetserve.api.batch_input import InputLine, parse_input, unknown_models
from fleetserve.api.batch_objects import batch_errors, validation_error
from fleetserve.api.batch_results import error_line
from fleetserve.api.batch_store import BatchStore
from fleetserve.wire import paths
from fleetserve.wire.errors import describe_error

logger = logging.getLogger("fleetserve.api")


class BatchRunner:
    def __init__(self, store: BatchStore, options: BatchOptions) -> None:
        self.store = store
        self.options = options
        self.slots = asyncio.Semaphore(options.max_concurrent_lines)
        self.tasks: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()

    def nudge(self) -> None:
        """A batch was created or cancelled: look now rather than at the next poll."""
        self._wake.set()

    @asynccontextmanager
    async def running(self, app: object) -> AsyncIterator[None]:
        """Run batches through `app` for the duration of the block (an app's lifespan)."""
        async with in_process_client(app) as client:
            loop_task = asyncio.create_task(self._loop(client))
            try:
                yield
            finally:
                # Lines still running are abandoned unanswered: the next start runs them again.
                for task in [loop_task, *self.tasks.values()]:
                    task.cancel()
                await asyncio.gather(loop_task, *self.tasks.values(), return_exceptions=True)

    async def _loop(self, client: httpx.AsyncClient) -> None:
        while True:
            if self.store.claim_runner():
                for batch_id in self.store.unfinished_batch_ids():
                    if batch_id not in self.tasks:
                        task = asyncio.create_task(self._drive(client, batch_id), name=f"batch {batch_id}")
                        self.tasks[batch_id] = task
                        task.add_done_callback(self._forget)
            try:
                await asyncio.wait_for(self._wake.wait(), self.options.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _forget(self, done: asyncio.Task) -> None:
        for batch_id, task in list(self.tasks.items()):
            if task is done:
                del self.tasks[batch_id]

    async def _drive(self, client: httpx.AsyncClient, batch_id: str) -> None:
        try:
            await self._advance(client, batch_id)
        except Exception as exc:  # noqa: BLE001 - the batch fails with the reason; the server goes on
            logger.exception("fleetserve: batch %s failed", batch_id)
            self.store.update_batch(batch_id, status="failed", failed_at=int(time.time()), errors=batch_errors(
                [validation_error("internal_error", f"the batch stopped on an internal error: {describe_error(exc)}; "
                                  "see the server log")]))

    async def _advance(self, client: httpx.AsyncClient, batch_id: str) -> None:
        batch = self.store.get_batch(batch_id)
        if batch is not None and batch["status"] == "validating":
            batch = await self._validate(client, batch)
        if batch is not None and batch["status"] == "in_progress":
            await self._run(client, batch)
            batch = self.store.get_batch(batch_id)
        if batch is None:
            return
        now = int(time.time())
        if batch["status"] == "cancelling":
            self._finish(batch_id, status="cancelled", cancelled_at=now)
        elif batch["status"] == "finalizing":
            self._finish(batch_id, status="completed", completed_at=now)

    async def _validate(self, client: httpx.AsyncClient, batch: dict) -> dict | None:
        content = self.store.file_content(batch["input_file_id"])
        lines: list[InputLine] = []
        if content is None:
            errors = [validation_error("file_not_found", f"the input file {batch['input_file_id']} was deleted "
                                       "before the batch started", None, "input_file_id")]
        else:
            lines, errors = parse_input(content, batch["endpoint"])
        if not errors:
            errors = unknown_models(lines, await _served_models(client))
        if errors:
            logger.info("fleetserve: batch %s failed validation: %s", batch["id"], errors[0]["message"])
            return self.store.update_batch(batch["id"], ("validating", "cancelling"), status="failed",
                                           failed_at=int(time.time()), errors=batch_errors(errors))
        rows = ((line.index, line.custom_id, line.request, None if line.refusal is None else "error", line.refusal)
                for line in lines)
        self.store.start_lines(batch["id"], rows, ("validating",), status="in_progress",
                               in_progress_at=int(time.time()))
        logger.info("fleetserve: batch %s: %d requests", batch["id"], len(lines))
        return self.store.get_batch(batch["id"])

    async def _run(self, client: httpx.AsyncClient, batch: dict) -> None:
        batch_id = batch["id"]

        def stopped() -> bool:
            return self.store.batch_status(batch_id) != "in_progress" or time.time() >= batch["expires_at"]

        def record(index: int, outcome: str, result: dict) -> None:
            self.store.record_result(batch_id, index, outcome, result)

        await self._wait_ready(client, stopped)
        await run_lines(client, self.store.pending_lines(batch_id), self.slots, record, stopped,
                        self.options.retry_delay_s)
        if time.time() >= batch["expires_at"] and self.store.pending_lines(batch_id):
            self._expire(batch_id)
        elif not self.store.pending_lines(batch_id):
            self.store.update_batch(batch_id, ("in_progress",), status="finalizing", finalizing_at=int(time.time()))

    async def _wait_ready(self, client: httpx.AsyncClient, stopped: Callable[[], bool]) -> None:
        while True:
            try:
                if (await client.get(paths.HEALTH)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if stopped():
                return
            await asyncio.sleep(self.options.retry_delay_s)

    def _expire(self, batch_id: str) -> None:
        for index, custom_id, _ in self.store.pending_lines(batch_id):
            self.store.record_result(batch_id, index, "error", error_line(
                custom_id, "batch_expired", "This request could not be executed before the completion window "
                "expired."))
        self._finish(batch_id, status="expired", expired_at=int(time.time()))

    def _finish(self, batch_id: str, **fields: object) -> None:
        batch = self.store.finish(batch_id, **fields)
        if batch is not None:
            logger.info("fleetserve: batch %s %s: %s", batch_id, batch["status"], batch["request_counts"])


async def _served_models(client: httpx.AsyncClient) -> list[str]:
    response = await client.get(paths.MODELS)
    response.raise_for_status()
    return [model["id"] for model in response.json()["data"]]
