"""How much of the recent traffic each routing key carries, forgetting old requests exponentially.

A key's share is its decayed count over the decayed count of all requests, both forgetting at the same
rate (a request `half_life` requests ago counts half), so the share is right from the first requests on
and follows a workload whose mix changes. Memory is bounded: past `max_keys` keys, those carrying least
are dropped (they are the ones whose share could not matter).
"""
from __future__ import annotations

from collections.abc import Iterable


class KeyHeat:
    def __init__(self, half_life: float = 256.0, max_keys: int = 65536) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be a positive number of requests, got {half_life}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.decay = 2.0 ** (-1.0 / half_life)
        self.max_keys = max_keys
        self.clock = 0  # requests counted so far
        self.total = 0.0  # decayed count of all requests, as of `clock`
        self._counts: dict[int | str, tuple[float, int]] = {}  # key -> (decayed count, as of this clock)

    def share(self, key: int | str) -> float:
        """The key's share of recent requests, 0..1 (0 for a key never seen)."""
        entry = self._counts.get(key)
        if entry is None or self.total <= 0:
            return 0.0
        count, at = entry
        return count * self.decay ** (self.clock - at) / self.total

    def count(self, keys: Iterable[int | str]) -> None:
        """One more request, which carries every key in `keys`."""
        self.clock += 1
        clock, decay, counts = self.clock, self.decay, self._counts
        self.total = self.total * decay + 1.0
        for key in keys:
            entry = counts.get(key)
            counts[key] = (1.0 if entry is None else entry[0] * decay ** (clock - entry[1]) + 1.0, clock)
        if len(counts) > self.max_keys:
            self._forget_coldest()

    def _forget_coldest(self) -> None:
        clock, decay = self.clock, self.decay
        ranked = sorted(self._counts.items(), key=lambda item: item[1][0] * decay ** (clock - item[1][1]))
        for key, _ in ranked[:len(ranked) - self.max_keys // 2]:
            del self._counts[key]
