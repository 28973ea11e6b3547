"""Mélange's own solver input, and its published answer on its published example."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fleetserve.plan.assignment import solve_melange, solve_split
from fleetserve.plan.melange_input import read_melange

EXAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "anchors" / "melange_example.json"


@pytest.fixture
def example():
    if not EXAMPLE.exists():
        pytest.skip(f"Mélange's published example is not at {EXAMPLE} (the shared anchors folder beside the repo)")
    return read_melange(EXAMPLE)


def test_example_reads_as_published(example):
    assert example.costs == {"A10G": 1.01, "A100-80GB": 3.67}
    assert example.capacity["A100-80GB"] == [[20, 20], [40, 20]]
    assert example.shares == [[0.2, 0.1], [0.5, 0.2]]
    assert (example.total_rate, example.slice_factor) == (30.0, 1)


def test_example_gives_melange_published_answer(example):
    plan = solve_melange(example)
    assert plan.devices == {"A10G": 3, "A100-80GB": 1}
    assert plan.cost_per_hour == pytest.approx(6.70)
    assert plan.fleet_spec == "A10G:3,A100-80GB:1"


def test_split_never_costs_more_on_the_example(example):
    assert solve_split(example).cost_per_hour <= solve_melange(example).cost_per_hour + 1e-9


@pytest.mark.parametrize("slice_factor", [2, 4, 8])
def test_finer_slices_never_cost_more_on_the_example(example, slice_factor):
    sliced = solve_melange(replace(example, slice_factor=slice_factor))
    assert sliced.cost_per_hour <= solve_melange(example).cost_per_hour + 1e-9
    assert sliced.cost_per_hour >= solve_split(example).cost_per_hour - 1e-9
    for shares in sliced.bucket_shares.values():
        assert sum(shares.values()) == pytest.approx(1.0)
        assert all((share * slice_factor) == pytest.approx(round(share * slice_factor)) for share in shares.values())


GOOD = {"gpu_info": {"A10G": {"cost": 1.01, "tputs": [[2, 1], [5, 2]]}},
        "workload_distribution": [[0.2, 0.1], [0.5, 0.2]], "total_request_rate": 30.0}


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "melange.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_slice_factor_defaults_to_one(tmp_path):
    assert read_melange(_write(tmp_path, GOOD)).slice_factor == 1


@pytest.mark.parametrize("data, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "expected a JSON object"),
    ({k: v for k, v in GOOD.items() if k != "total_request_rate"}, "missing key.*total_request_rate"),
    ({**GOOD, "slice_facter": 2}, "unknown key.*slice_facter"),
    ({**GOOD, "gpu_info": {}}, "gpu_info must be a non-empty object"),
    ({**GOOD, "gpu_info": {"A10G": {"cost": 1.0}}}, r"gpu_info\['A10G'\] is missing 'tputs'"),
    ({**GOOD, "gpu_info": {"A10G": {"cost": "cheap", "tputs": [[2, 1], [5, 2]]}}}, r"\.cost must be a number"),
    ({**GOOD, "gpu_info": {"A10G": {"cost": 1, "tputs": [[2, 1], [5, None]]}}}, r"tputs\[1\]\[1\] must be a number"),
    ({**GOOD, "gpu_info": {"A10G": {"cost": 1, "tputs": [[2, 1]]}}}, "tputs has shape 1x2 but workload_distribution"),
    ({**GOOD, "gpu_info": {"A10G": {"cost": 1, "tputs": [[2, 1], [5]]}}}, "rows of lengths"),
    ({**GOOD, "workload_distribution": [[0.2, 0.1], [0.5, 0.1]]}, "sum to 1"),
    ({**GOOD, "total_request_rate": True}, "total_request_rate must be a number"),
    ({**GOOD, "slice_factor": 1.5}, "slice_factor must be a whole number"),
])
def test_bad_file_names_itself_and_the_fault(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as caught:
        read_melange(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read Mélange input .*nowhere.json"):
        read_melange(tmp_path / "nowhere.json")
