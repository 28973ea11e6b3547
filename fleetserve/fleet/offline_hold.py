"""The router's waiting room for offline requests: while the OfflineGate finds no replica with room, offline
requests wait here, first come first served, and go on as soon as a request ends somewhere."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

RECHECK_S = 0.5  # also look again this often: health changes and new replicas open room without a request ending


class OfflineHold:
    def __init__(self) -> None:
        self._queue: deque[object] = deque()
        self._changed = asyncio.Event()
        self.total_held = 0
        self.total_wait_s = 0.0

    @property
    def num_held(self) -> int:
        return len(self._queue)

    def notify(self) -> None:
        """Capacity may have changed (a request ended, a replica joined)."""
        self._changed.set()

    async def wait_turn(self, has_room: Callable[[], bool]) -> float:
        """Return (with the seconds waited) once this request is first in line and `has_room()` holds; the
        caller routes it right away, before anything else runs."""
        if not self._queue and has_room():
            return 0.0
        token = object()
        self._queue.append(token)
        self.total_held += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while not (self._queue[0] is token and has_room()):
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), RECHECK_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._queue.remove(token)
            self.notify()  # the next in line looks again
        waited = loop.time() - started
        self.total_wait_s += waited
        return waited
