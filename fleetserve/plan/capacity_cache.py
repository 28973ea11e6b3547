"""Simulation results a plan needs, kept on disk so a second plan over the same profiles is near-instant.

One JSON file of entries keyed by a digest of everything a result depends on. For a capacity: the model's
architecture, the hardware's figures, the performance model, the engine settings, the SLO and attainment
target, the search settings, and the bucket's sampled request lengths. For a re-check round: the same
settings, the fleet, the routing, and a digest of the whole workload. Change any of them and the key
changes. A corrupt or foreign file is not trusted: it is set aside and the cache starts empty.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fleetserve" / "plan_capacities.json"


def capacity_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class CapacityCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("not a map of results")
                self.entries = {str(k): v for k, v in data.items()}
            except ValueError:
                path.replace(path.with_suffix(".corrupt"))

    def get(self, key: str) -> Any:
        value = self.entries.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = value

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.entries, indent=0, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(self.path)
