"""Service classes and priorities in workloads: tagging, a seeded high-priority share, merging an offline batch,
trace columns, and the sim/bench flags that drive them; bad input is a clear error."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from fleetserve.commands.service_class_arguments import apply_service_classes
from fleetserve.commands.sim import add_sim_arguments
from fleetserve.workload import (
    RequestSpec,
    TraceError,
    Workload,
    arriving_at,
    merged,
    read_trace,
    synthetic_workload,
    tagged,
    with_priority_fraction,
)


def synthetic(n: int = 50, rate: float = 10.0, seed: int = 0, **kwargs) -> Workload:
    return synthetic_workload(n, rate, prompt_len="uniform:8:64", output_len="uniform:1:16", seed=seed, **kwargs)


# --- specs and tagging ------------------------------------------------------------------------------

def test_a_spec_defaults_to_online_at_priority_zero_and_its_json_leaves_defaults_out():
    spec = RequestSpec("r", 0.0, 10, 5)
    assert (spec.service_class, spec.priority) == ("online", 0)
    assert "service_class" not in spec.to_jsonable() and "priority" not in spec.to_jsonable()
    offline = RequestSpec("r", 0.0, 10, 5, priority=-2, service_class="offline")
    data = offline.to_jsonable()
    assert (data["service_class"], data["priority"]) == ("offline", -2)
    assert RequestSpec.from_jsonable(data) == offline
    assert RequestSpec.from_jsonable(spec.to_jsonable()) == spec


@pytest.mark.parametrize("fields, message", [
    ({"service_class": "batch"}, "service_class must be one of ['online', 'offline']"),
    ({"priority": 1.5}, "priority must be a whole number"),
    ({"priority": True}, "priority must be a whole number"),
    ({"priority": "1"}, "priority must be a whole number"),
])
def test_a_spec_refuses_a_bad_class_or_priority(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RequestSpec("r", 0.0, 10, 5, **fields)


def test_tagging_sets_every_request_and_says_so():
    workload = synthetic()
    offline = tagged(workload, "offline")
    assert {spec.service_class for spec in offline} == {"offline"} and {spec.priority for spec in offline} == {0}
    both = tagged(workload, "offline", 3)
    assert {(spec.service_class, spec.priority) for spec in both} == {("offline", 3)}
    assert both.transforms[-1] == "every request service_class=offline priority=3"
    assert [spec.arrival_s for spec in both] == [spec.arrival_s for spec in workload]
    assert tagged(workload) is workload
    assert {spec.service_class for spec in workload} == {"online"}, "the original is untouched"


@pytest.mark.parametrize("service_class, priority, message", [
    ("urgent", None, "service class must be one of"),
    (None, 0.5, "priority must be a whole number"),
])
def test_tagging_refuses_bad_values(service_class, priority, message):
    with pytest.raises(ValueError, match=message):
        tagged(synthetic(), service_class, priority)


# --- a seeded high-priority share -------------------------------------------------------------------

def test_a_priority_fraction_picks_an_exact_count_reproducibly():
    workload = synthetic(200)
    first = with_priority_fraction(workload, 0.1, -1, seed=7)
    again = with_priority_fraction(workload, 0.1, -1, seed=7)
    other = with_priority_fraction(workload, 0.1, -1, seed=8)

    def chosen(w: Workload) -> list[str]:
        return [spec.request_id for spec in w if spec.priority == -1]

    assert len(chosen(first)) == 20 and chosen(first) == chosen(again) and chosen(first) != chosen(other)
    assert {spec.priority for spec in first} == {-1, 0}
    assert first.describe()["priorities"] == {"-1": 20, "0": 180}
    assert "20 requests (10.0%, seed 7) at priority -1" in first.transforms[-1]
    assert not chosen(with_priority_fraction(workload, 0.0))
    assert len(chosen(with_priority_fraction(workload, 1.0))) == 200


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_a_priority_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match="must be between 0 and 1"):
        with_priority_fraction(synthetic(), fraction)


# --- merging ----------------------------------------------------------------------------------------

def test_merging_orders_by_arrival_and_keeps_each_part_apart():
    online = synthetic(30, rate=5.0, shared_prefix_groups=2, shared_prefix_tokens=32)
    batch = arriving_at(tagged(synthetic(20, seed=1, shared_prefix_groups=2, shared_prefix_tokens=32), "offline"),
                        math.inf)
    mix = merged([online, batch])
    assert len(mix) == 50
    arrivals = [spec.arrival_s for spec in mix]
    assert arrivals == sorted(arrivals)
    ids = [spec.request_id for spec in mix]
    assert len(set(ids)) == 50
    assert {spec.request_id for spec in mix if spec.service_class == "online"} == {spec.request_id for spec in online}
    assert all(spec.request_id.startswith("offline-synthetic-") for spec in mix if spec.service_class == "offline")
    online_prefixes = {p for spec in mix if spec.service_class == "online" for p in spec.prefix_ids}
    offline_prefixes = {p for spec in mix if spec.service_class == "offline" for p in spec.prefix_ids}
    assert online_prefixes and offline_prefixes and not online_prefixes & offline_prefixes
    # Ties at 0 s: the first part's request comes first.
    assert mix.requests[0].request_id == online.requests[0].request_id
    assert mix.describe()["service_classes"] == {"online": 30, "offline": 20}
    assert mix.name == "synthetic (online) + synthetic (offline)"
    assert "merged with synthetic (offline, 20 requests" in mix.transforms[-1]


def test_merging_keeps_ids_that_do_not_collide_and_renames_clashing_sessions():
    first = Workload([RequestSpec("a-0", 0.0, 10, 2, session_id="s"), RequestSpec("a-1", 1.0, 10, 2)], "a", "x")
    second = Workload([RequestSpec("b-0", 0.5, 10, 2, session_id="s")], "b", "y")
    mix = merged([first, tagged(second, "offline")])
    assert [spec.request_id for spec in mix] == ["a-0", "b-0", "a-1"]
    assert [spec.session_id for spec in mix] == ["s", "offline-s", None]


def test_merging_two_parts_of_one_class_labels_them_by_position():
    mix = merged([synthetic(5), synthetic(5, seed=2)])
    assert len({spec.request_id for spec in mix}) == 10
    assert any(spec.request_id.startswith("part1-") for spec in mix)


def test_merging_nothing_is_refused():
    with pytest.raises(ValueError, match="at least one workload"):
        merged([])


def test_arrivals_at_a_rate_are_poisson_and_reproducible():
    batch = synthetic(100)
    at_rate = arriving_at(batch, 50.0, seed=3)
    assert [spec.arrival_s for spec in at_rate] == [spec.arrival_s for spec in arriving_at(batch, 50.0, seed=3)]
    assert at_rate.requests[0].arrival_s == 0.0 and 1.0 < at_rate.duration_s < 4.0
    assert {spec.arrival_s for spec in arriving_at(batch, math.inf)} == {0.0}


# --- trace columns ----------------------------------------------------------------------------------

def test_trace_columns_carry_class_and_priority(tmp_path: Path):
    azure = tmp_path / "azure.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens,service_class,priority\n"
                     "2023-11-16 18:15:46.0000000,100,10,offline,2\n"
                     "2023-11-16 18:15:47.0000000,100,10,,\n"
                     "2023-11-16 18:15:48.0000000,100,10,Online,-1\n")
    assert [(s.service_class, s.priority) for s in read_trace(azure)] == [("offline", 2), ("online", 0),
                                                                           ("online", -1)]
    mooncake = tmp_path / "mooncake.jsonl"
    mooncake.write_text(json.dumps({"timestamp": 0, "input_length": 10, "output_length": 2,
                                    "service_class": "offline", "priority": 1}) + "\n"
                        + json.dumps({"timestamp": 5, "input_length": 10, "output_length": 2}) + "\n")
    assert [(s.service_class, s.priority) for s in read_trace(mooncake)] == [("offline", 1), ("online", 0)]
    burstgpt = tmp_path / "burst.csv"
    burstgpt.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,priority\n"
                        "0,ChatGPT,10,5,15,Conversation log,-3\n")
    assert read_trace(burstgpt).requests[0].priority == -3


@pytest.mark.parametrize("row, message", [
    ("urgent,0", r"azure.csv:2: service_class 'urgent' is not one of \['online', 'offline'\]"),
    ("online,high", r"azure.csv:2: priority 'high' is not a whole number"),
    ("online,1.5", r"azure.csv:2: priority '1.5' is not a whole number"),
])
def test_bad_trace_columns_name_the_line(tmp_path: Path, row, message):
    azure = tmp_path / "azure.csv"
    azure.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens,service_class,priority\n"
                     f"2023-11-16 18:15:46.0000000,100,10,{row}\n")
    with pytest.raises(TraceError, match=message):
        read_trace(azure)


def test_a_mooncake_priority_that_is_not_whole_is_refused(tmp_path: Path):
    mooncake = tmp_path / "m.jsonl"
    mooncake.write_text(json.dumps({"timestamp": 0, "input_length": 10, "output_length": 2, "priority": 0.5}) + "\n")
    with pytest.raises(TraceError, match=r"m.jsonl:1: priority 0.5 is not a whole number"):
        read_trace(mooncake)


# --- the flags --------------------------------------------------------------------------------------

def sim_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    return parser.parse_args(["--synthetic", "rate=10,n=40", "--fleet", "cpu:1", *flags])


def test_the_flags_tag_share_and_merge():
    workload = synthetic(40)
    mix = apply_service_classes(workload, sim_args(
        "--high-priority-fraction", "0.25", "--high-priority", "-5",
        "--offline-synthetic", "rate=1,n=30,prompt=fixed:16,output=fixed:4", "--offline-num-requests", "12",
        "--offline-at-start", "--max-output-tokens", "3"))
    online = [spec for spec in mix if spec.service_class == "online"]
    offline = [spec for spec in mix if spec.service_class == "offline"]
    assert len(online) == 40 and len(offline) == 12
    assert sum(spec.priority == -5 for spec in online) == 10 and {spec.priority for spec in offline} == {0}
    assert {spec.arrival_s for spec in offline} == {0.0} and {spec.output_tokens for spec in offline} == {3}
    tagged_all = apply_service_classes(workload, sim_args("--service-class", "offline", "--priority", "2"))
    assert {(spec.service_class, spec.priority) for spec in tagged_all} == {("offline", 2)}
    assert apply_service_classes(workload, sim_args()) is workload


def test_the_offline_seed_differs_from_the_main_one_unless_the_spec_sets_it():
    spec = "rate=10,n=20,prompt=uniform:8:64,output=uniform:1:16"
    main = synthetic_workload(20, 10.0, prompt_len="uniform:8:64", output_len="uniform:1:16", seed=0)
    mix = apply_service_classes(main, sim_args("--offline-synthetic", spec))
    offline = [spec.prompt_tokens for spec in mix if spec.service_class == "offline"]
    assert offline != [spec.prompt_tokens for spec in main]
    same = apply_service_classes(main, sim_args("--offline-synthetic", spec + ",seed=0"))
    assert sorted(s.prompt_tokens for s in same if s.service_class == "offline") == sorted(
        s.prompt_tokens for s in main)


@pytest.mark.parametrize("flags, message", [
    (["--offline-at-start"], "--offline-at-start shape the offline workload; give --offline-trace"),
    (["--offline-rate", "3"], "--offline-rate shape the offline workload"),
    (["--high-priority", "-3"], "--high-priority -3 needs --high-priority-fraction"),
    (["--offline-trace", "/nonexistent/trace.csv"], "trace file not found: /nonexistent/trace.csv"),
    (["--offline-synthetic", "n=5"], "needs rate="),
])
def test_flag_mistakes_are_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        apply_service_classes(synthetic(10), sim_args(*flags))


@pytest.mark.parametrize("flags", [
    ["--high-priority-fraction", "1.5"], ["--high-priority-fraction", "x"], ["--service-class", "batch"],
    ["--priority", "0.5"], ["--offline-rate", "0"], ["--offline-trace", "a", "--offline-synthetic", "b"],
    ["--offline-at-start", "--offline-rate", "2"],
])
def test_bad_flag_values_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit):
        sim_args(*flags)
    assert "error:" in capsys.readouterr().err
