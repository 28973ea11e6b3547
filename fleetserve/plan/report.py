"""What `fleetserve plan` shows and writes: the solutions and their costs, the routing, the re-check, plots."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetserve.plan.assignment import Assignment


def write_json(path: str | Path, result: Mapping[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def print_solutions(console: Any, solutions: Mapping[str, Assignment]) -> None:
    from rich.table import Table
    table = Table(title="solutions")
    for column in ("solution", "fleet", "cost per hour"):
        table.add_column(column)
    for name, assignment in solutions.items():
        table.add_row(name, assignment.fleet_spec, f"${assignment.cost_per_hour:,.2f}")
    console.print(table)


def print_plan(console: Any, result: Mapping[str, Any]) -> None:
    from rich.table import Table
    table = Table(title=f"plan for {result['total_rate']:.3g} req/s, SLO {slo_text(result['slo'])} at "
                        f"{result['attainment']:g} attainment")
    for column in ("solution", "fleet", "cost per hour", "re-checked fleet", "re-checked cost", "SLO held"):
        table.add_column(column, overflow="fold")
    for name, entry in result["solutions"].items():
        if entry is None:
            table.add_row(name, "none meets the SLO", "-", "-", "-", "-")
            continue
        checked = entry.get("rechecked")
        table.add_row(name, entry["fleet"], f"${entry['cost_per_hour']:,.2f}",
                      checked["fleet"] if checked else "-",
                      f"${checked['cost_per_hour']:,.2f}" if checked else "-",
                      ("yes" if checked["met"] else "no") if checked else "-")
    console.print(table)
    routing = Table(title="routing: share of each bucket's requests per hardware pool")
    routing.add_column("bucket")
    routing.add_column("requests", justify="right")
    routing.add_column("shares")
    counts = result["buckets"]["requests"]
    for entry in result["routing"]["weights"]:
        shares = ", ".join(f"{pool} {share:.0%}" for pool, share in entry["shares"].items())
        routing.add_row(entry["label"], str(counts.get(entry["label"], 0)), shares)
    console.print(routing)
    recheck = result.get("recheck")
    if recheck is not None:
        console.print(f"re-check on the whole workload: SLO attainment {recheck['slo_attainment']:.3f} "
                      f"(target {recheck['target_attainment']:g}) on {result['fleet']}"
                      + ("" if recheck["met"] else f", NOT met after {len(recheck['rounds'])} rounds"))
    single = result["solutions"].get("single_type")
    if single is not None and single.get("rechecked") and result.get("recheck"):
        saving = 1 - result["cost_per_hour"] / single["rechecked"]["cost_per_hour"]
        console.print(f"against the cheapest single type ({single['rechecked']['fleet']}, "
                      f"${single['rechecked']['cost_per_hour']:,.2f}/h): {saving:+.0%} cost saved")


def slo_text(slo: Mapping[str, Any]) -> str:
    return ", ".join(f"{key[:-3]} <= {value:g} ms" for key, value in slo.items() if value is not None)


def write_plots(result: Mapping[str, Any], folder: Path) -> list[Path]:
    """costs.png: each solution's hourly cost (as planned and as re-checked); capacities.png: per hardware,
    the requests/s one device sustains in each bucket."""
    from matplotlib.figure import Figure
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    names = [name for name, entry in result["solutions"].items() if entry is not None]
    planned = [result["solutions"][name]["cost_per_hour"] for name in names]
    checked = [(result["solutions"][name].get("rechecked") or {}).get("cost_per_hour", 0.0) for name in names]
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], planned, 0.4, label="planned")
    axes.bar([p + 0.2 for p in positions], checked, 0.4, label="after re-check")
    axes.set_xticks(list(positions), names)
    axes.set_ylabel("$ per hour")
    axes.set_title("fleet cost per solution")
    axes.legend()
    figure.savefig(folder / "costs.png", dpi=100)
    written.append(folder / "costs.png")
    capacities = result["capacities"]
    figure = Figure(figsize=(4 * len(capacities), 3.5), layout="constrained")
    for index, (hardware, grid) in enumerate(capacities.items()):
        axes = figure.add_subplot(1, len(capacities), index + 1)
        image = axes.imshow(grid, cmap="viridis", origin="lower")
        axes.set_title(f"{hardware}: req/s per device")
        axes.set_xlabel("output bucket")
        axes.set_ylabel("input bucket")
        figure.colorbar(image, ax=axes)
    figure.savefig(folder / "capacities.png", dpi=100)
    written.append(folder / "capacities.png")
    return written
