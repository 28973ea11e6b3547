"""The KV-cache event feed a cache-aware router follows: which block hashes this replica holds.
Format and hash definition: docs/kv_events.md."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, AsyncIterator

from fleetserve.api.sse import sse_event

if TYPE_CHECKING:
    from fleetserve.api.state import ServerState

POLL_INTERVAL_S = 0.05
KEEPALIVE_INTERVAL_S = 15.0


def read_batches(state: ServerState, since: int) -> tuple[list[dict], int, bool]:
    """Batches with seq in [since, next_seq), next_seq, and whether some batches after `since` are gone."""
    log = state.aengine.kv_events
    upper = log.next_seq  # read first: batches appended meanwhile are left for the next call
    batches = [b for b in log.since(since) if b["seq"] < upper]
    oldest = batches[0]["seq"] if batches else upper
    dropped = since > upper or oldest > since
    return batches, upper, dropped


def snapshot(state: ServerState, since: int) -> dict:
    state.require_engine()
    batches, next_seq, dropped = read_batches(state, since)
    return {"next_seq": next_seq, "block_size": state.engine_config.block_size, "dropped": dropped,
            "batches": batches}


async def event_stream(state: ServerState, since: int) -> AsyncIterator[str]:
    """One SSE event per batch; a comment every 15 s keeps idle proxies from closing the connection."""
    batches, seq, dropped = read_batches(state, since)
    yield sse_event({"block_size": state.engine_config.block_size, "dropped": dropped})
    last_sent = time.monotonic()
    while not state.draining:
        for batch in batches:
            yield sse_event(batch)
            last_sent = time.monotonic()
        if not batches:
            if time.monotonic() - last_sent > KEEPALIVE_INTERVAL_S:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(POLL_INTERVAL_S)
        batches, upper, _ = read_batches(state, seq)
        seq = upper
