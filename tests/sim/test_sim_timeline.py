import json

import pytest

from fleetserve.fleet.policies import LeastLoaded
from fleetserve.sim.fleet import SimFleet
from fleetserve.sim.timeline import FIELDS, ReplicaTimeline
from fleetserve.workload.synthetic import synthetic_workload

from sim_helpers import LinearPerf, make_replicas


def test_the_timeline_samples_every_replica_on_its_grid_and_counts_what_was_routed():
    replicas = make_replicas(3, LinearPerf())
    timeline = ReplicaTimeline(replicas, interval_s=1.0)
    workload = synthetic_workload(60, rate=10.0, prompt_len="uniform:100:400", output_len="uniform:10:40",
                                  shared_prefix_groups=2, shared_prefix_tokens=64, seed=3)
    records = SimFleet(replicas, LeastLoaded(), timeline).run(workload)
    times = timeline.times
    grid_cells = [int(time // 1.0) for time in times[:-1]]  # at most one sample per second of the grid
    assert times[0] == 0.0 and grid_cells == sorted(set(grid_cells)) and times[-1] > times[-2]
    assert times[-1] >= max(record.end_s for record in records) - 1e-9  # a last sample once all is done
    for series in timeline.series.values():
        assert all(len(series[name]) == len(times) for name in FIELDS)
        assert series["in_flight"][-1] == series["waiting"][-1] == series["running"][-1] == 0
        assert series["routed"] == sorted(series["routed"])
    assert sum(series["routed"][-1] for series in timeline.series.values()) == 60
    assert max(series["in_flight"][i] for series in timeline.series.values() for i in range(len(times))) > 0
    # Both groups' 64-token prefixes (4 blocks of 16) end up cached somewhere.
    assert sum(series["cached_blocks"][-1] for series in timeline.series.values()) >= 8


def test_the_timeline_is_written_as_json_and_a_plot(tmp_path):
    replicas = make_replicas(2, LinearPerf())
    timeline = ReplicaTimeline(replicas, interval_s=0.5)
    SimFleet(replicas, LeastLoaded(), timeline).run(synthetic_workload(10, rate=5.0, seed=1))
    paths = timeline.write(tmp_path / "timeline", "test")
    data = json.loads(paths[0].read_text())
    assert set(data["replicas"]) == {"r0", "r1"} and data["fields"] == list(FIELDS)
    assert paths[1].stat().st_size > 0


def test_a_timeline_needs_a_positive_interval():
    with pytest.raises(ValueError, match="interval must be positive"):
        ReplicaTimeline(make_replicas(1), interval_s=0)
