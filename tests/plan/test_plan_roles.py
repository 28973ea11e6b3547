"""The planner with replica roles: disaggregated units beside single devices, priced as their devices, rented by
the integer program only where cheaper, written out and re-checked with roles."""
import json

import pytest

from fleetserve.cli import main
from fleetserve.perf.hardware import get_hardware, parse_fleet_spec
from fleetserve.plan.assignment import PlanInput, solve_melange
from fleetserve.plan.disaggregated_units import (
    DisaggregatedUnit,
    devices_with_roles,
    fleet_spec_with_roles,
    parse_unit_shapes,
    pool_shares,
    units_for,
)
from fleetserve.plan.recheck import device_to_add, fleet_of

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192}
# Long prompts, a tight TPOT and whole-prompt prefill steps: a mixed replica's prefills stall its decodes.
LONG_PROMPTS = ["--synthetic", "rate=20,n=150,prompt=uniform:3000:6000,output=uniform:100:200,seed=4",
                "--slo", "ttft=2000,tpot=12", "--max-num-batched-tokens", "8192", "--attainment", "0.9",
                "--sample-requests", "40", "--input-edges", "100000", "--output-edges", "100000", "--hardware", "h100"]


@pytest.fixture
def model_config(tmp_path):
    path = tmp_path / "llama-8b.json"
    path.write_text(json.dumps(LLAMA_8B))
    return path


def test_a_unit_is_named_priced_and_laid_out_as_its_devices():
    h100 = get_hardware("h100")
    unit = DisaggregatedUnit(h100, 1, 3)
    assert unit.name == "h100-1p3d" and unit.devices == 4
    assert unit.price_per_hour_usd == pytest.approx(4 * h100.price_per_hour_usd)
    assert [(entry.hardware.name, entry[1], entry.role) for entry in unit.fleet()] == [
        ("h100", 1, "prefill"), ("h100", 3, "decode")]
    assert [u.name for u in units_for([h100, get_hardware("a100")], [(1, 1), (1, 3)])] == [
        "h100-1p1d", "h100-1p3d", "a100-1p1d", "a100-1p3d"]
    with pytest.raises(ValueError, match="at least one prefill and one decode"):
        DisaggregatedUnit(h100, 0, 2)


def test_plan_counts_become_a_fleet_spec_with_roles_and_shares_go_to_hardware_pools():
    h100 = get_hardware("h100")
    units = {u.name: u for u in units_for([h100], [(1, 3), (1, 1)])}
    devices = devices_with_roles({"h100": 2, "h100-1p3d": 2, "h100-1p1d": 1, "a100": 0}, units)
    assert devices == {"h100": 2, "h100:prefill": 3, "h100:decode": 7}
    spec = fleet_spec_with_roles(devices)
    assert spec == "h100:2,h100:3:prefill,h100:7:decode"
    assert [(e.hardware.name, e[1], e.role) for e in parse_fleet_spec(spec)] == [
        (e.hardware.name, e[1], e.role) for e in fleet_of(devices, {"h100": h100})]
    assert fleet_spec_with_roles({"h100": 2, "l4": 3}) == "h100:2,l4:3"
    assert pool_shares({"h100": 0.25, "h100-1p3d": 0.5, "l4": 0.25}, units) == {"h100": 0.75, "l4": 0.25}


@pytest.mark.parametrize(("text", "message"), [
    ("1", "not PREFILL:DECODE"), ("1:x", "not PREFILL:DECODE"), ("0:2", "at least one prefill"),
    ("1:2,1:2", "given twice")])
def test_bad_unit_shapes_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_unit_shapes(text)


def test_the_program_rents_a_unit_only_for_the_buckets_where_it_is_cheaper():
    # Bucket 0: a mixed device does 10 req/s for $3 (0.3 $/req/s), the 4-device unit 30 for $12 (0.4): mixed.
    # Bucket 1: a mixed device does 1 req/s (3), the unit 8 (1.5): the unit.
    plan = PlanInput(costs={"h100": 3.0, "h100-1p3d": 12.0},
                     capacity={"h100": [[10.0, 1.0]], "h100-1p3d": [[30.0, 8.0]]},
                     shares=[[0.5, 0.5]], total_rate=16.0)
    assignment = solve_melange(plan)
    assert assignment.devices == {"h100": 1, "h100-1p3d": 1}
    assert assignment.bucket_shares[(0, 0)] == {"h100": pytest.approx(1.0)}
    assert assignment.bucket_shares[(0, 1)] == {"h100-1p3d": pytest.approx(1.0)}


def test_a_short_pool_with_roles_gets_the_role_its_misses_call_for():
    assert device_to_add("h100", {"h100": 3}, 0.9) == "h100"
    assert device_to_add("h100", {"h100:prefill": 1, "h100:decode": 3}, 0.9) == "h100:prefill"
    assert device_to_add("h100", {"h100:prefill": 1, "h100:decode": 3}, 0.2) == "h100:decode"


def test_plan_with_units_proposes_a_disaggregated_fleet_where_it_is_cheaper(tmp_path, model_config, capsys):
    cache = tmp_path / "cache.json"
    mixed, roles = tmp_path / "mixed.json", tmp_path / "roles.json"
    common = ["plan", *LONG_PROMPTS, "--model-config", str(model_config), "--cache", str(cache)]
    assert main([*common, "--json", str(mixed)]) in (0, 1), capsys.readouterr().err
    assert main([*common, "--disaggregated-units", "1:2", "--disaggregation", "always", "--json", str(roles)]) == 0, \
        capsys.readouterr().err
    without, with_units = json.loads(mixed.read_text()), json.loads(roles.read_text())
    assert without["fleet"].count(":") == 1 and "disaggregation" not in without
    assert "h100-1p2d" in with_units["capacities"] and with_units["disaggregation"]["mode"] == "always"
    split = with_units["solutions"]["split"]
    assert "h100-1p2d" in split["devices"] and ":prefill" in split["fleet"] and ":decode" in split["fleet"]
    assert split["cost_per_hour"] < without["solutions"]["split"]["cost_per_hour"]
    # The re-check simulated the fleet with its roles, and the plan's fleet is a spec `sim --fleet` takes.
    assert with_units["recheck"]["met"] and any(":" in key for key in with_units["recheck"]["devices"])
    assert parse_fleet_spec(with_units["fleet"])
    assert {pool for entry in with_units["routing"]["weights"] for pool in entry["shares"]} == {"h100"}


def test_disaggregation_flags_without_units_are_refused(model_config, capsys):
    assert main(["plan", *LONG_PROMPTS, "--model-config", str(model_config), "--no-cache",
                 "--disaggregation", "always"]) == 2
    assert "--disaggregation need --disaggregated-units" in capsys.readouterr().err
