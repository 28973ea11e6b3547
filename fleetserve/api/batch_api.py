"""The Batch API of one app: its SQLite store, its runner and its routes, opened together.

    batches = BatchAPI(BatchOptions(db_path="batches.sqlite3"))
    app.include_router(batches.router)
    async with batches.running(app): ...     # in the app's lifespan
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fleetserve.api.batch_config import BatchOptions
from fleetserve.api.batch_routes import batch_router
from fleetserve.api.batch_runner import BatchRunner
from fleetserve.api.batch_store import BatchStore


class BatchAPI:
    def __init__(self, options: BatchOptions, cache_dir: str | None = None) -> None:
        self.store = BatchStore(options.resolved_db_path(cache_dir))
        self.runner = BatchRunner(self.store, options)
        self.router = batch_router(self.store, self.runner)

    @asynccontextmanager
    async def running(self, app: object) -> AsyncIterator[None]:
        try:
            async with self.runner.running(app):
                yield
        finally:
            self.store.close()
