import argparse
import os
import threading

import pytest

from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options
from fleetserve.engine.config import EngineConfig
from fleetserve.engine.thread_policy import (
    READ_INTERVAL_S,
    CpuReading,
    ThreadPolicy,
    cgroup_cpu_limit,
    physical_cores,
    read_cpu,
    usable_cores,
)


class FakeMachine:
    """A clock and /proc/stat-like readings: `others` cores' worth of busy time from other processes, `own` from
    the engine."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy = 0.0
        self.own = 0.0
        self.reads = 0

    def run(self, seconds: float, others: float, own: float) -> None:
        self.now += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def read(self) -> CpuReading:
        self.reads += 1
        return CpuReading(self.now, self.busy, self.own)


def adaptive_policy(machine: FakeMachine, cores: int = 2) -> tuple[ThreadPolicy, list[int]]:
    applied: list[int] = []
    return ThreadPolicy(None, applied.append, cores=cores, read=machine.read, clock=lambda: machine.now), applied


def test_usable_cores_is_the_smaller_of_affinity_and_quota():
    assert usable_cores({0, 1, 2, 3}, None) == 4
    assert usable_cores({0, 1, 2, 3}, 2.0) == 2
    assert usable_cores({0, 1, 2, 3}, 1.5) == 2  # throttled together, two threads stall no barrier
    assert usable_cores({0, 1, 2, 3}, 0.25) == 1
    assert usable_cores({0, 1}, 8.0) == 2
    assert usable_cores({0, 1, 2, 3}, None, physical=2) == 2


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "membership").write_text("0::/box\n")
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "membership") == 1.5
    (tmp_path / "box" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "membership") is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "membership").write_text("4:memory:/x\n1:cpu,cpuacct:/box\n0::/\n")
    folder = tmp_path / "cpu,cpuacct" / "box"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("300000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "membership") == 3.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path, tmp_path / "membership") is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cgroup_cpu_limit(tmp_path, tmp_path / "missing") is None


def test_hyperthreads_of_one_core_count_once(tmp_path):
    for cpu, core in ((0, 0), (1, 1), (2, 0), (3, 1)):
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "core_id").write_text(f"{core}\n")
        (folder / "physical_package_id").write_text("0\n")
    assert physical_cores({0, 1, 2, 3}, tmp_path) == 2
    assert physical_cores({0, 2}, tmp_path) == 1
    assert physical_cores({0, 9}, tmp_path) == 2  # no topology for cpu9: counted as its own core


def test_read_cpu_counts_only_our_cpus_and_busy_fields(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 900 900 900 0 0 0 0 0\n"
                    "cpu0 100 10 20 5000 7 1 2 3 40 0\n"
                    "cpu1 999 999 999 0 0 0 0 0 0 0\n"
                    "intr 12345\n")
    reading = read_cpu({0}, stat)
    assert reading is not None
    # user + nice + system + irq + softirq + steal of cpu0 only; idle, iowait and guest (inside user) left out
    assert reading.busy_s * os.sysconf("SC_CLK_TCK") == pytest.approx(100 + 10 + 20 + 1 + 2 + 3)
    assert read_cpu({0}, tmp_path / "missing") is None


def test_starts_with_every_usable_core():
    machine = FakeMachine()
    policy, applied = adaptive_policy(machine, cores=4)
    assert applied == [4] and policy.threads == 4


def test_drops_to_the_free_share_and_comes_back():
    machine = FakeMachine()
    policy, applied = adaptive_policy(machine)
    machine.run(READ_INTERVAL_S, others=0.7, own=1.3)  # a busy loop sharing the cores with our two threads
    policy.before_step()
    assert policy.threads == 1 and applied == [2, 1]
    machine.run(READ_INTERVAL_S, others=1.0, own=1.0)  # one thread each: we stay at one
    policy.before_step()
    assert applied == [2, 1]
    machine.run(READ_INTERVAL_S, others=0.0, own=1.0)  # the competitor has gone
    policy.before_step()
    assert policy.threads == 2 and applied == [2, 1, 2]


def test_light_load_keeps_every_core():
    machine = FakeMachine()
    policy, applied = adaptive_policy(machine)
    machine.run(READ_INTERVAL_S, others=0.3, own=1.7)
    policy.before_step()
    assert policy.threads == 2 and applied == [2]


def test_never_below_one_thread():
    machine = FakeMachine()
    policy, applied = adaptive_policy(machine)
    machine.run(READ_INTERVAL_S, others=2.0, own=0.0)
    policy.before_step()
    assert policy.threads == 1


def test_reads_at_most_once_per_interval():
    machine = FakeMachine()
    policy, _ = adaptive_policy(machine)
    reads = machine.reads
    for _ in range(50):
        machine.run(READ_INTERVAL_S / 100, others=1.0, own=1.0)
        policy.before_step()
    assert machine.reads == reads
    machine.run(READ_INTERVAL_S, others=1.0, own=1.0)
    policy.before_step()
    assert machine.reads == reads + 1


def test_unreadable_load_keeps_the_count():
    applied: list[int] = []
    now = [0.0]
    policy = ThreadPolicy(None, applied.append, cores=2, read=lambda: None, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 2 * READ_INTERVAL_S
        policy.before_step()
    assert applied == [2]


def test_an_explicit_count_is_honoured_and_never_adapted():
    def no_reading():
        raise AssertionError("a fixed thread count must not read the load")
    applied: list[int] = []
    policy = ThreadPolicy(3, applied.append, cores=2, read=no_reading)
    for _ in range(5):
        policy.before_step()
    assert applied == [3] and not policy.adapts


def test_applies_again_on_a_new_stepping_thread():
    # An OpenMP thread count belongs to the thread that set it: the async engine steps on its own thread.
    applied: list[int] = []
    policy = ThreadPolicy(3, applied.append, cores=2)
    worker = threading.Thread(target=policy.before_step)
    worker.start()
    worker.join()
    policy.before_step()
    assert applied == [3, 3, 3]


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(flags))


def test_threads_flag():
    assert engine_options(parse())["num_threads"] is None
    assert engine_options(parse("--threads", "auto"))["num_threads"] is None
    assert engine_options(parse("--threads", "3"))["num_threads"] == 3


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_threads_flag_is_a_clear_error(bad, capsys):
    with pytest.raises(SystemExit):
        parse("--threads", bad)
    assert "auto or a whole number of threads >= 1" in capsys.readouterr().err


def test_config_refuses_zero_threads():
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        EngineConfig(num_threads=0)
