"""The assignment program on cases small enough to solve by hand."""
from __future__ import annotations

import pytest

from fleetserve.plan.assignment import Infeasible, PlanInput, solve_melange, solve_split

# Two types, one input bucket, two output buckets; 4 req/s, 3 in bucket A = (0, 0) and 1 in bucket B = (0, 1).
#   S: $1.0/h, 1 req/s on A, cannot serve B.     L: $2.5/h, 4 req/s on A, 2 req/s on B.
# B must go to L: 0.5 of an L.
# Mélange (whole buckets): A on S needs 3 S -> 3 S + 1 L = $5.5; A on L adds 0.75 -> 1.25 L -> 2 L = $5.0.
# Split: 1 S + 1 L ($3.5) holds it only if S takes x req/s of A with x <= 1 and L takes 3 - x with
# (3 - x) / 4 + 0.5 <= 1, i.e. x >= 1: so x = 1, A goes 1/3 to S and 2/3 to L, both at full load. Nothing
# cheaper carries B and A (1 L alone is 1.25 L of load; S alone cannot serve B).
HANDMADE = PlanInput(costs={"S": 1.0, "L": 2.5}, capacity={"S": [[1.0, 0.0]], "L": [[4.0, 2.0]]},
                     shares=[[0.75, 0.25]], total_rate=4.0)


def test_handmade_melange_sends_whole_buckets_to_the_large_type():
    plan = solve_melange(HANDMADE)
    assert plan.devices == {"L": 2}
    assert plan.cost_per_hour == pytest.approx(5.0)
    assert plan.bucket_shares == {(0, 0): {"L": 1.0}, (0, 1): {"L": 1.0}}
    assert plan.utilization == {"L": pytest.approx(1.25 / 2)}
    assert plan.fleet_spec == "L:2"


def test_handmade_split_divides_bucket_a_and_is_strictly_cheaper():
    plan = solve_split(HANDMADE)
    assert plan.devices == {"S": 1, "L": 1}
    assert plan.cost_per_hour == pytest.approx(3.5)
    assert plan.bucket_shares[(0, 0)] == {"S": pytest.approx(1 / 3), "L": pytest.approx(2 / 3)}
    assert plan.bucket_shares[(0, 1)] == {"L": 1.0}
    assert plan.utilization == {"S": pytest.approx(1.0), "L": pytest.approx(1.0)}
    assert plan.fleet_spec == "S:1,L:1"


def test_three_slices_let_melange_reach_the_split_optimum():
    from dataclasses import replace
    plan = solve_melange(replace(HANDMADE, slice_factor=3))
    assert plan.devices == {"S": 1, "L": 1}
    assert plan.cost_per_hour == pytest.approx(3.5)
    assert plan.bucket_shares[(0, 0)] == {"S": pytest.approx(1 / 3), "L": pytest.approx(2 / 3)}


@pytest.mark.parametrize("solve", [solve_melange, solve_split])
def test_equal_cost_prefers_fewer_devices(solve):
    # Two X ($1 each, 1 req/s) or one Y ($2, 2 req/s) both cost $2 for 2 req/s.
    plan = solve(PlanInput(costs={"X": 1.0, "Y": 2.0}, capacity={"X": [[1.0]], "Y": [[2.0]]},
                           shares=[[1.0]], total_rate=2.0))
    assert plan.devices == {"Y": 1}
    assert plan.cost_per_hour == pytest.approx(2.0)


@pytest.mark.parametrize("solve", [solve_melange, solve_split])
def test_fewer_devices_never_outweigh_a_cent(solve):
    plan = solve(PlanInput(costs={"X": 1.0, "Y": 2.01}, capacity={"X": [[1.0]], "Y": [[2.0]]},
                           shares=[[1.0]], total_rate=2.0))
    assert plan.devices == {"X": 2}
    assert plan.cost_per_hour == pytest.approx(2.0)


@pytest.mark.parametrize("solve", [solve_melange, solve_split])
def test_free_hardware_is_not_piled_up(solve):
    plan = solve(PlanInput(costs={"free": 0.0}, capacity={"free": [[2.0]]}, shares=[[1.0]], total_rate=3.0))
    assert plan.devices == {"free": 2}
    assert plan.cost_per_hour == 0.0


def test_bucket_without_traffic_needs_no_hardware():
    plan = solve_split(PlanInput(costs={"S": 1.0}, capacity={"S": [[1.0, 0.0]]}, shares=[[1.0, 0.0]],
                                 total_rate=1.0))
    assert plan.devices == {"S": 1}
    assert plan.bucket_shares == {(0, 0): {"S": 1.0}}


@pytest.mark.parametrize("solve", [solve_melange, solve_split])
def test_infeasible_names_the_bucket_and_the_hardware(solve):
    with pytest.raises(Infeasible, match=r"bucket \(1, 0\).*S, L") as caught:
        solve(PlanInput(costs={"S": 1.0, "L": 2.0}, capacity={"S": [[1.0], [0.0]], "L": [[1.0], [0.0]]},
                        shares=[[0.5], [0.5]], total_rate=1.0))
    assert caught.value.bucket == (1, 0)


@pytest.mark.parametrize("change, message", [
    ({"costs": {}, "capacity": {}}, "no hardware"),
    ({"costs": {"S": -1.0}}, "cost of 'S'"),
    ({"capacity": {"S": [[1.0, 0.0]], "X": [[1.0, 1.0]]}}, "same hardware"),
    ({"capacity": {"S": [[1.0]], "L": [[4.0, 2.0]]}}, "capacity of 'S' is 1x1 but shares are 1x2"),
    ({"capacity": {"S": [[1.0, float("nan")]], "L": [[4.0, 2.0]]}}, r"capacity of 'S'.*\[0\]\[1\]"),
    ({"shares": [[0.75, 0.5]]}, "sum to 1"),
    ({"shares": [[1.25, -0.25]]}, r"shares\[0\]\[1\]"),
    ({"shares": [[0.5], [0.25, 0.25]]}, "rows of one"),
    ({"total_rate": 0.0}, "total_rate"),
    ({"slice_factor": 0}, "slice_factor"),
])
def test_bad_plan_input_says_what_is_wrong(change, message):
    fields = {"costs": HANDMADE.costs, "capacity": HANDMADE.capacity, "shares": HANDMADE.shares,
              "total_rate": HANDMADE.total_rate, **change}
    with pytest.raises(ValueError, match=message):
        PlanInput(**fields)
