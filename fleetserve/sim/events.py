"""The virtual clock: a queue of wake-up times, one pending wake-up per owner (a simulated replica).

Setting an owner's wake-up again replaces the earlier one; the stale heap entry is skipped when it surfaces
(cheaper than removing it). Ties pop in owner order, so a run is deterministic.
"""
from __future__ import annotations

import heapq
import math


class WakeupQueue:
    def __init__(self, num_owners: int) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._versions = [0] * num_owners
        self._due: list[float | None] = [None] * num_owners

    def __len__(self) -> int:
        return sum(1 for due in self._due if due is not None)

    def add_owner(self) -> int:
        """One more owner, with nothing pending; returns its number."""
        self._versions.append(0)
        self._due.append(None)
        return len(self._due) - 1

    def set(self, owner: int, time: float | None) -> None:
        """Wake `owner` at `time`, replacing its earlier wake-up; None cancels it."""
        self._versions[owner] += 1
        self._due[owner] = time
        if time is not None:
            heapq.heappush(self._heap, (time, owner, self._versions[owner]))

    def due(self, owner: int) -> float | None:
        return self._due[owner]

    def peek_time(self) -> float:
        """The earliest pending wake-up, or +inf when none is pending."""
        heap = self._heap
        while heap and heap[0][2] != self._versions[heap[0][1]]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def pop(self) -> tuple[float, int]:
        """(time, owner) of the earliest pending wake-up, which is removed; raises IndexError when empty."""
        heap = self._heap
        while heap:
            time, owner, version = heapq.heappop(heap)
            if version == self._versions[owner]:
                self._due[owner] = None
                return time, owner
        raise IndexError("no wake-up is pending")
