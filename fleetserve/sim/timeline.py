"""Each simulated replica's state over time: what the router sees of it and what its engine holds.

Sampled on a fixed grid of simulated time (`interval_s`), at the first arrival at or after each grid point
(so a sample shows the fleet as that routing decision saw it), and once more when the replay ends. Per
replica and sample: requests routed there so far, requests in flight (router's count), queued work in
tokens (prompt tokens waiting for prefill plus output tokens to decode, as policies see it), requests
waiting and running in the engine's scheduler, KV-cache usage and cached prefix blocks. This is the view
to read when a policy misbehaves: which replicas take the load, whether their queues grow, and whether
their caches keep what the policy routed there for. A replica an autoscaler adds later has no values
(null) for the samples before it existed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fleetserve.sim.replica import SimReplica

FIELDS = ("routed", "in_flight", "queued_work_tokens", "waiting", "running", "kv_usage", "cached_blocks")


class ReplicaTimeline:
    def __init__(self, replicas: list[SimReplica], interval_s: float = 10.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"the timeline's interval must be positive seconds, got {interval_s}")
        self.replicas = replicas
        self.interval_s = interval_s
        self.next_sample_s = 0.0
        self.times: list[float] = []
        self.series: dict[str, dict[str, list[float | None]]] = {
            replica.replica_id: {name: [] for name in FIELDS} for replica in replicas}
        self.routed = [0] * len(replicas)

    def routed_to(self, index: int) -> None:
        if index >= len(self.routed):
            self._add_new_replicas()
        self.routed[index] += 1

    def _add_new_replicas(self) -> None:
        """Replicas appended to the fleet's list since the last look (an autoscaler started them)."""
        for replica in self.replicas[len(self.routed):]:
            self.series[replica.replica_id] = {name: [None] * len(self.times) for name in FIELDS}
            self.routed.append(0)

    def reached(self, now: float, last: bool = False) -> None:
        """The fleet is at `now` (an arrival, or with `last` the end of the replay): sample if a grid point
        has passed, and always at the end."""
        if now < self.next_sample_s and not (last and (not self.times or self.times[-1] < now)):
            return
        if len(self.routed) < len(self.replicas):
            self._add_new_replicas()
        self.times.append(now)
        for index, replica in enumerate(self.replicas):
            router, scheduler, kv = replica.router, replica.scheduler, replica.kv
            values = (self.routed[index], router.in_flight,
                      max(router.waiting_prefill_tokens, 0) + max(router.decoding_tokens, 0),
                      len(scheduler.waiting) + len(replica.inbox), len(scheduler.running), kv.usage,
                      kv.num_cached_blocks)
            columns = self.series[replica.replica_id]
            for name, value in zip(FIELDS, values):
                columns[name].append(value)
        self.next_sample_s = (now // self.interval_s + 1) * self.interval_s

    def to_jsonable(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "fields": list(FIELDS), "times_s": self.times,
                "replicas": self.series}

    def write(self, folder: str | Path, title: str) -> list[Path]:
        """timeline.json and replicas.png (one panel per field, one line per replica) into `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        data_path = out / "replica_timeline.json"
        data_path.write_text(json.dumps(self.to_jsonable()) + "\n", encoding="utf-8")
        plot_path = out / "replica_timeline.png"
        self.figure(title).savefig(plot_path, dpi=100)
        return [data_path, plot_path]

    def figure(self, title: str) -> Any:
        from matplotlib.figure import Figure
        labels = {"routed": "requests routed (cumulative)", "in_flight": "in flight",
                  "queued_work_tokens": "queued work (tokens)", "waiting": "waiting in engine",
                  "running": "running in engine", "kv_usage": "KV usage", "cached_blocks": "cached prefix blocks"}
        figure = Figure(figsize=(11, 2.2 * len(FIELDS)), layout="constrained")
        figure.suptitle(f"{title}: per replica over the run")
        first = None
        for row, name in enumerate(FIELDS):
            axes = figure.add_subplot(len(FIELDS), 1, row + 1, sharex=first)
            first = first or axes
            for replica_id, columns in self.series.items():
                values = [math.nan if value is None else value for value in columns[name]]
                axes.plot(self.times, values, label=replica_id, linewidth=1)
            axes.set_ylabel(labels[name], fontsize="small")
            axes.grid(alpha=0.3)
        if first is not None and len(self.series) <= 16:
            first.legend(loc="upper left", fontsize="x-small", ncol=8)
        figure.axes[-1].set_xlabel("simulated seconds")
        return figure
