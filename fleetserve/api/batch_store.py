"""Batch API state in one SQLite file: uploaded and produced files (content as a BLOB), batches (the OpenAI
Batch object as JSON), and one row per batch line holding its result once it has one.

A line's result is written the moment the line finishes, and a line with a result is never run again, so
a server killed mid-batch resumes where it stopped and answers every custom_id exactly once. Request
counts are read from the line rows rather than kept as counters, so they cannot drift from them.

Every method is one short transaction under a lock, so the asyncio side may call them directly; several
processes may share the file (SQLite's own locking), and only the one holding the runner lock runs lines.
"""
from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any, Iterable

from fleetserve.api.batch_objects import file_object

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, batch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT, request TEXT,
    outcome TEXT CHECK (outcome IN ('output', 'error')), result TEXT,
    PRIMARY KEY (batch_id, line));
"""
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


class BatchStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._lock = threading.RLock()
        self._runner_lock: IO[bytes] | None = None
        with self._lock:
            # WAL: a killed process loses no committed line, and readers never wait for the runner's writes.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._runner_lock is not None:
                self._runner_lock.close()
                self._runner_lock = None

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def claim_runner(self) -> bool:
        """True when this process may run batch lines: it holds the runner lock beside the database."""
        if self._runner_lock is not None:
            return True
        handle = open(self.path.with_name(self.path.name + ".runner-lock"), "wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._runner_lock = handle
        return True

    # files

    def add_file(self, filename: str, purpose: str, content: bytes, db: sqlite3.Connection | None = None) -> dict:
        file_id, created_at = new_id("file-"), int(time.time())
        with self._transaction() if db is None else nullcontext(db) as conn:
            conn.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                         (file_id, filename, purpose, len(content), created_at, content))
        return file_object(file_id, filename, purpose, len(content), created_at)

    def get_file(self, file_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?",
                                   (file_id,)).fetchone()
        return None if row is None else file_object(*row)

    def file_content(self, file_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def list_files(self, purpose: str | None, after: str | None, limit: int) -> tuple[list[dict], bool]:
        query = "SELECT id, filename, purpose, bytes, created_at FROM files WHERE 1"
        params: list[Any] = []
        if purpose:
            query += " AND purpose = ?"
            params.append(purpose)
        if after:
            query += " AND rowid < (SELECT rowid FROM files WHERE id = ?)"
            params.append(after)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*params, limit + 1)).fetchall()
        return [file_object(*row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str) -> bool:
        with self._transaction() as conn:
            return conn.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0

    # batches

    def add_batch(self, batch: dict) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO batches VALUES (?, ?)", (batch["id"], json.dumps(batch)))

    def get_batch(self, batch_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT batch FROM batches WHERE id = ?", (batch_id,)).fetchone()
            return None if row is None else self._with_counts(json.loads(row[0]))

    def batch_status(self, batch_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT json_extract(batch, '$.status') FROM batches WHERE id = ?",
                                   (batch_id,)).fetchone()
        return None if row is None else row[0]

    def _with_counts(self, batch: dict) -> dict:
        total, completed, failed = self._db.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE outcome = 'output'), COUNT(*) FILTER (WHERE outcome = 'error') "
            "FROM batch_lines WHERE batch_id = ?", (batch["id"],)).fetchone()
        batch["request_counts"] = {"total": total, "completed": completed, "failed": failed}
        return batch

    def list_batches(self, after: str | None, limit: int) -> tuple[list[dict], bool]:
        query, params = "SELECT batch FROM batches", []
        if after:
            query += " WHERE rowid < (SELECT rowid FROM batches WHERE id = ?)"
            params.append(after)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*params, limit + 1)).fetchall()
            return [self._with_counts(json.loads(row[0])) for row in rows[:limit]], len(rows) > limit

    def update_batch(self, batch_id: str, only_if_status: tuple[str, ...] | None = None, **fields: Any) -> dict | None:
        """Set fields of a batch (in one transaction); None if it does not exist or its status is not one of
        only_if_status."""
        with self._transaction() as conn:
            return self._update(conn, batch_id, only_if_status, fields)

    def _update(self, conn: sqlite3.Connection, batch_id: str, only_if_status: tuple[str, ...] | None,
                fields: dict) -> dict | None:
        row = conn.execute("SELECT batch FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        batch = json.loads(row[0])
        if only_if_status is not None and batch["status"] not in only_if_status:
            return None
        batch.update(fields)
        conn.execute("UPDATE batches SET batch = ? WHERE id = ?", (json.dumps(batch), batch_id))
        return self._with_counts(batch)

    def unfinished_batch_ids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM batches WHERE json_extract(batch, '$.status') IN "
                                    f"({', '.join('?' * len(UNFINISHED))}) ORDER BY rowid", UNFINISHED).fetchall()
        return [batch_id for (batch_id,) in rows]

    # lines

    def start_lines(self, batch_id: str, lines: Iterable[tuple[int, str | None, dict | None, str | None, dict | None]],
                    only_if_status: tuple[str, ...], **fields: Any) -> dict | None:
        """Store the batch's lines, (index, custom_id, request, outcome, result) with outcome and result
        already set for lines refused before running, and set the batch's fields if its status is one of
        only_if_status, at once."""
        with self._transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO batch_lines VALUES (?, ?, ?, ?, ?, ?)",
                             ((batch_id, index, custom_id, None if request is None else json.dumps(request), outcome,
                               None if result is None else json.dumps(result))
                              for index, custom_id, request, outcome, result in lines))
            return self._update(conn, batch_id, only_if_status, fields)

    def pending_lines(self, batch_id: str) -> list[tuple[int, str, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT line, custom_id, request FROM batch_lines WHERE batch_id = ? AND "
                                    "outcome IS NULL ORDER BY line", (batch_id,)).fetchall()
        return [(line, custom_id, json.loads(request)) for line, custom_id, request in rows]

    def record_result(self, batch_id: str, line: int, outcome: str, result: dict) -> bool:
        """False when the line already had a result (it is never answered twice)."""
        with self._transaction() as conn:
            return conn.execute("UPDATE batch_lines SET outcome = ?, result = ? WHERE batch_id = ? AND line = ? "
                                "AND outcome IS NULL", (outcome, json.dumps(result), batch_id, line)).rowcount > 0

    def finish(self, batch_id: str, **fields: Any) -> dict | None:
        """Write the output and error files from the line results (in line order; lines with no result are
        left out) and set the batch's fields, in one transaction, so a restart never makes them twice."""
        with self._transaction() as conn:
            files: dict[str, str | None] = {}
            for outcome, key in (("output", "output_file_id"), ("error", "error_file_id")):
                rows = conn.execute("SELECT result FROM batch_lines WHERE batch_id = ? AND outcome = ? ORDER BY line",
                                    (batch_id, outcome)).fetchall()
                content = "".join(row[0] + "\n" for row in rows).encode()
                files[key] = (self.add_file(f"{batch_id}_{outcome}.jsonl", "batch_output", content, conn)["id"]
                              if rows else None)
            return self._update(conn, batch_id, None, {**files, **fields})


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db = db
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        finally:
            self.lock.release()

