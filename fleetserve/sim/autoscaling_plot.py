"""The autoscaled fleet over a run, as a picture: replicas serving, starting and draining (stacked, as they
change), the count each decision wanted, the changes the delays held back, and the GPU-hours spent so far."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetserve.sim.autoscaling import DRAINING, SERVING, STARTING


def write_autoscaling(stats: dict[str, Any], folder: str | Path, title: str) -> list[Path]:
    """autoscaling.json (the run's `sim.autoscaling`) and autoscaling.png into `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "autoscaling.json"
    data_path.write_text(json.dumps(stats) + "\n", encoding="utf-8")
    plot_path = out / "autoscaling.png"
    figure(stats, title).savefig(plot_path, dpi=100)
    return [data_path, plot_path]


def gpu_hours_over_time(changes: dict[str, list[float]]) -> list[float]:
    """Cumulative GPU-hours at each change time (every replica alive, starting or draining, is paid for)."""
    spent, total = [], 0.0
    times = changes["times_s"]
    for index, now in enumerate(times):
        if index:
            alive = sum(changes[state][index - 1] for state in (STARTING, SERVING, DRAINING))
            total += alive * (now - times[index - 1]) / 3600
        spent.append(total)
    return spent


def figure(stats: dict[str, Any], title: str) -> Any:
    from matplotlib.figure import Figure
    changes, decisions = stats["timeline"], stats["decisions"]
    times = changes["times_s"]
    figure = Figure(figsize=(11, 6.6), layout="constrained")
    figure.suptitle(f"{title}: autoscaling ({stats['config']['policy']}), {stats['gpu_hours']:.2f} GPU-hours")
    replicas = figure.add_subplot(3, 1, 1)
    replicas.stackplot(times, changes[SERVING], changes[STARTING], changes[DRAINING], step="post",
                       labels=("serving", "starting", "draining"), alpha=0.8)
    replicas.step(decisions["times_s"], decisions["desired"], where="post", color="black", linewidth=0.8,
                  label="desired")
    replicas.set_ylabel("replicas")
    replicas.legend(loc="upper left", fontsize="x-small", ncol=4)
    pending = figure.add_subplot(3, 1, 2, sharex=replicas)
    pending.step(decisions["times_s"], decisions["pending"], where="post", linewidth=0.8)
    pending.set_ylabel("held back (+up / -down)", fontsize="small")
    spent = figure.add_subplot(3, 1, 3, sharex=replicas)
    spent.plot(times, gpu_hours_over_time(changes), linewidth=1)
    spent.set_ylabel("GPU-hours so far", fontsize="small")
    spent.set_xlabel("simulated seconds")
    for axes in (replicas, pending, spent):
        axes.grid(alpha=0.3)
    return figure
