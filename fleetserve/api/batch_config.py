"""The Batch API's settings: where its SQLite database lives and how many batch lines run at once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DB_FILENAME = "batches.sqlite3"


@dataclass(frozen=True)
class BatchOptions:
    # None: batches.sqlite3 in the model cache directory ($FLEETSERVE_CACHE or the user cache dir).
    db_path: str | None = None
    max_concurrent_lines: int = 16
    # How often the runner looks for batches created by another process sharing the database.
    poll_interval_s: float = 1.0
    # How long a line refused with 429 or 503 (queue full, still loading, draining) waits before its retry.
    retry_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_concurrent_lines < 1:
            raise ValueError(f"the number of batch lines run at once must be >= 1, got {self.max_concurrent_lines}")

    def resolved_db_path(self, cache_dir: str | None = None) -> Path:
        if self.db_path:
            return Path(self.db_path).expanduser()
        from fleetserve.model.loader import cache_root
        return cache_root(cache_dir) / DB_FILENAME
