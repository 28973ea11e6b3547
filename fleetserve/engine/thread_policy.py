"""How many threads the engine's parallel regions use (torch's and the C kernels', which share one OpenMP runtime),
picked from the cores this process may use and adapted between steps to the load other processes put on them.

A parallel region ends at a barrier, so it runs at the pace of its slowest thread. When another process keeps a
core busy, one of the engine's threads shares that core with it and every region waits for that thread: on two
cores with one busy competitor the offline workload falls from 114 to 38 output tokens/s with two threads, while
one thread alone keeps 68. So `auto` runs one thread per core that is free: the usable cores (the physical cores
among the CPUs of our affinity, capped by a cgroup CPU quota) less the cores that other processes kept busy since
the last reading, which is the busy time of those CPUs in /proc/stat less this process's own CPU time. It reads
at most once per READ_INTERVAL_S and only between steps, so no step changes its thread count midway and the cost
is one small read a second. An explicit count is used as given. The count is applied on the thread that runs the
steps, because an OpenMP thread count belongs to the thread that sets it.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

logger = logging.getLogger("fleetserve.engine")

READ_INTERVAL_S = 1.0  # long enough for /proc/stat's 10 ms ticks to average out, short next to a workload
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user already)


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup"),
                     membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """Cores' worth of CPU time the cgroup quota allows (cgroup v2 cpu.max or v1 cfs_quota_us), None if unlimited."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    v2_paths, v1_paths = [], []
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":
            v2_paths.append(path.lstrip("/"))
        elif "cpu" in controllers.split(","):
            v1_paths.append((controllers, path.lstrip("/")))
    candidates: list[tuple[Path, Path | None]] = [(cgroup_root / path / "cpu.max", None) for path in v2_paths]
    candidates.append((cgroup_root / "cpu.max", None))
    for controllers, path in v1_paths:
        for folder in (controllers, "cpu"):
            candidates.append((cgroup_root / folder / path / "cpu.cfs_quota_us",
                               cgroup_root / folder / path / "cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, ValueError):
            continue
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    return None


def affinity() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], topology: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct cores among the CPUs: two hyperthreads of one core share its units, and a bandwidth-bound step
    gains nothing from the second."""
    cores = set()
    for cpu in cpus:
        try:
            folder = topology / f"cpu{cpu}" / "topology"
            cores.add(((folder / "physical_package_id").read_text().strip(), (folder / "core_id").read_text().strip()))
        except OSError:
            cores.add((f"cpu{cpu}", ""))
    return len(cores)


def usable_cores(cpus: set[int], quota_cores: float | None, physical: int | None = None) -> int:
    """The cores we may run on, capped by the quota: a quota of 1.5 cores still lets two threads run, throttled
    together, which stalls no barrier."""
    cores = physical if physical is not None else len(cpus)
    if quota_cores is not None:
        cores = min(cores, math.ceil(quota_cores))
    return max(1, cores)


@dataclass(frozen=True)
class CpuReading:
    wall_s: float
    busy_s: float  # CPU time spent by every process on our CPUs
    own_s: float  # this process's CPU time, all its threads


def read_cpu(cpus: set[int], stat: Path = Path("/proc/stat")) -> CpuReading | None:
    """Busy time of the given CPUs and this process's CPU time, now; None where /proc/stat cannot be read."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    ticks = 0
    for line in text.splitlines():
        name, _, values = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            fields = values.split()
            ticks += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    times = os.times()
    return CpuReading(time.monotonic(), ticks / os.sysconf("SC_CLK_TCK"), times.user + times.system)


def others_busy_cores(before: CpuReading, after: CpuReading) -> float:
    """Cores' worth of our CPUs that other processes used between two readings."""
    elapsed = after.wall_s - before.wall_s
    if elapsed <= 0:
        return 0.0
    return max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / elapsed


def fair_threads(cores: int, others: float) -> int:
    """One thread per core that others leave free, rounding half a core up, never fewer than one."""
    return max(1, min(cores, math.floor(cores - others + 0.5)))


class ThreadPolicy:
    """Call before_step() on the thread that runs the steps, before each step."""

    def __init__(self, requested: int | None, apply: Callable[[int], None], cores: int | None = None,
                 read: Callable[[], CpuReading | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        cpus = affinity()
        self.requested = requested
        self.cores = cores if cores is not None else usable_cores(cpus, cgroup_cpu_limit(), physical_cores(cpus))
        self.threads = requested or self.cores
        self._apply = apply
        self._clock = clock
        self._read = read or (lambda: read_cpu(cpus))
        self._last = self._read() if requested is None else None
        self._apply(self.threads)
        self._applied = (threading.get_ident(), self.threads)

    @property
    def adapts(self) -> bool:
        return self.requested is None

    def before_step(self) -> None:
        if self.adapts:
            self._adapt()
        applied = (threading.get_ident(), self.threads)
        if applied != self._applied:
            self._apply(self.threads)
            self._applied = applied

    def _adapt(self) -> None:
        if self._last is not None and self._clock() - self._last.wall_s < READ_INTERVAL_S:
            return
        reading = self._read()
        if reading is None:
            return
        if self._last is not None:
            others = others_busy_cores(self._last, reading)
            threads = fair_threads(self.cores, others)
            if threads != self.threads:
                logger.info("threads %d -> %d: other processes kept %.1f of %d cores busy", self.threads, threads,
                            others, self.cores)
            self.threads = threads
        self._last = reading
