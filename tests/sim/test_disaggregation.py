"""Prefill/decode disaggregation in the simulator: roles, the KV link, remote prefills and their transfers."""
import json

import pytest

from fleetserve.cli import main
from fleetserve.fleet.disaggregation import DisaggregationRule
from fleetserve.fleet.policies import make_policy
from fleetserve.perf.hardware import CATALOG, FleetEntry, parse_fleet_spec
from fleetserve.perf.kv_link import KVLink, LinkKind, default_link_kind
from fleetserve.sim.acceptance import AcceptanceModel
from fleetserve.sim.build import build_replicas
from fleetserve.sim.config import Disaggregation, ReplicaConfig, SimOptions
from fleetserve.sim.fleet import SimFleet
from fleetserve.sim.replica import SimReplica
from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import synthetic_workload

from sim_helpers import LinearPerf

LINK = KVLink(LinkKind("test", 1e9, 1e-3, "a test link"), bytes_per_token=1000)
BLOCK = ReplicaConfig().block_size


def replica(replica_id: str, role: str = "mixed", kv_tokens: int = 200_000, skip: bool = True,
            config: ReplicaConfig | None = None) -> SimReplica:
    return SimReplica(replica_id, "test", LinearPerf(kv_tokens=kv_tokens), config or ReplicaConfig(),  # type: ignore[arg-type]
                      8192, SimOptions(skip_decodes=skip), role=role)


def fleet_of(roles: list[str], mode: str = "always", policy: str = "least_loaded", skip: bool = True,
             rule: object | None = None, decode_kv_tokens: int = 200_000, config: ReplicaConfig | None = None
             ) -> SimFleet:
    replicas = [replica(f"r{i}", role, decode_kv_tokens if role != "prefill" else 200_000, skip, config)
                for i, role in enumerate(roles)]
    disaggregation = Disaggregation(LINK, rule or DisaggregationRule(mode))  # type: ignore[arg-type]
    return SimFleet(replicas, make_policy(policy), disaggregation=disaggregation)


class RecordingRule:
    """The rule, noting which requests it sent to a prefill replica."""

    def __init__(self, rule: DisaggregationRule) -> None:
        self.rule = rule
        self.remote: dict[str, bool] = {}

    def choose_prefill(self, request, decode, snapshot):
        choice = self.rule.choose_prefill(request, decode, snapshot)
        self.remote[request.request_id] = choice is not None
        return choice


def assert_all_done_and_free(fleet: SimFleet) -> None:
    for one in fleet.replicas:
        assert one.kv.num_free_blocks == one.kv.num_blocks, one.replica_id
        assert not one.tracked and not one.scheduler.has_unfinished() and not one.imports and not one.handoffs
        assert one.router.in_flight == 0
        assert one.router.waiting_prefill_tokens == 0 and one.router.decoding_tokens == 0


def test_the_link_formula_uses_the_models_kv_bytes(llama3_8b):
    link = KVLink.of("infiniband", llama3_8b)
    assert link.bytes_per_token == 2 * 32 * 8 * 128 * 2  # K and V, layers, KV heads, head size, bf16
    assert link.transfer_seconds(1000) == pytest.approx(5e-6 + 1000 * 131072 / 50e9)
    assert KVLink.of("nvlink", llama3_8b, "float32").bytes_per_token == 2 * link.bytes_per_token
    with pytest.raises(ValueError, match="unknown KV link 'carrier-pigeon'"):
        KVLink.of("carrier-pigeon", llama3_8b)


def test_one_requests_transfer_takes_the_link_formula():
    fleet = fleet_of(["prefill", "decode"])
    [record] = fleet.run(Workload([RequestSpec("a", 1.0, 2000, 10)], "one", "test"))
    prefill, decode = fleet.replicas
    prefill_end = 1.0 + prefill.busy_s  # the prefill replica ran this prompt alone, from its arrival
    assert record.first_token_s == pytest.approx(prefill_end + LINK.transfer_seconds(2000), rel=1e-12)
    assert LINK.transfer_seconds(2000) == pytest.approx(1e-3 + 2000 * 1000 / 1e9)
    stats = fleet.transfers.stats
    assert (stats.remote_prefills, stats.local_prefills, stats.transferred_tokens) == (1, 0, 2000)
    assert stats.transferred_bytes == 2_000_000 and stats.transfer_s == pytest.approx(LINK.transfer_seconds(2000))
    assert record.output_tokens == 10 and len(record.token_times_s) == 10
    assert decode.kv.prefix_cache_queries == 2000  # the import, published to its prefix cache
    assert_all_done_and_free(fleet)


def test_always_sends_every_request_through_a_prefill_replica():
    workload = synthetic_workload(40, 30, prompt_len="uniform:20:600", output_len="uniform:1:60", seed=3)
    fleet = fleet_of(["prefill", "decode", "decode"])
    records = fleet.run(workload)
    expected = {spec.request_id: spec.output_tokens for spec in workload}
    assert all(record.success for record in records)
    assert {record.request_id: record.output_tokens for record in records} == expected
    assert all(len(record.token_times_s) == record.output_tokens for record in records)
    assert all(record.first_token_s > record.sent_s for record in records)
    stats = fleet.transfers.stats
    assert (stats.remote_prefills, stats.local_prefills, stats.fallbacks) == (40, 0, 0)
    assert stats.transferred_tokens == sum(spec.prompt_tokens for spec in workload)
    prefill = fleet.replicas[0]
    assert prefill.scheduler.num_preemptions == 0 and prefill.num_steps > 0
    assert_all_done_and_free(fleet)


def test_decode_runs_give_the_same_results_as_stepping_with_imports():
    workload = synthetic_workload(40, 40, prompt_len="uniform:20:600", output_len="uniform:1:60", seed=4)
    # round robin: a policy that reads load would see the router's counts, which a decode run updates at its end
    runs = [fleet_of(["prefill", "decode", "decode"], policy="round_robin", skip=skip).run(workload)
            for skip in (True, False)]
    for skipped, stepped in zip(*runs):
        assert skipped.token_times_s == pytest.approx(stepped.token_times_s, rel=1e-9)
        assert skipped.end_s == pytest.approx(stepped.end_s, rel=1e-9)


def test_never_equals_a_fleet_of_the_decode_replicas_alone():
    workload = synthetic_workload(40, 30, prompt_len="uniform:20:1500", output_len="uniform:1:60", seed=5)
    never = fleet_of(["prefill", "decode", "decode"], mode="never")
    disaggregated = never.run(workload)
    mixed = SimFleet([replica("r1"), replica("r2")], make_policy("least_loaded")).run(workload)
    for one, other in zip(disaggregated, mixed):
        assert (one.first_token_s, one.token_times_s, one.end_s, one.output_tokens) == \
               (other.first_token_s, other.token_times_s, other.end_s, other.output_tokens)
    assert never.transfers.stats.remote_prefills == 0 and never.replicas[0].num_steps == 0


def test_conditional_sends_long_uncached_prompts_remote_and_short_or_cached_ones_local():
    prefix = list(range(2000 // BLOCK))
    workload = Workload([
        RequestSpec("long", 0.0, 2000, 5, prefix_ids=prefix, prefix_block_tokens=BLOCK),
        RequestSpec("short", 0.1, 100, 5),
        # the same 2,000-token prefix, now in the decode replica's cache, and 64 new tokens
        RequestSpec("cached", 10.0, 2064, 5, prefix_ids=prefix, prefix_block_tokens=BLOCK),
        RequestSpec("other-long", 20.0, 2064, 5),
    ], "conditional", "test")
    rule = RecordingRule(DisaggregationRule("conditional", min_remote_prefill_tokens=500, max_prefill_queue=4))
    fleet = fleet_of(["prefill", "decode"], rule=rule)
    records = fleet.run(workload)
    assert rule.remote == {"long": True, "short": False, "cached": False, "other-long": True}
    assert all(record.success and record.output_tokens == 5 for record in records)
    assert fleet.transfers.stats.transferred_tokens == 2000 + 2064
    assert_all_done_and_free(fleet)


def test_only_the_blocks_the_decode_replica_lacks_cross_the_link():
    prefix = list(range(2000 // BLOCK))
    workload = Workload([
        RequestSpec("first", 0.0, 2000, 5, prefix_ids=prefix, prefix_block_tokens=BLOCK),
        RequestSpec("second", 10.0, 2064, 5, prefix_ids=prefix, prefix_block_tokens=BLOCK),
    ], "prefix", "test")
    fleet = fleet_of(["prefill", "decode"])
    fleet.run(workload)
    assert fleet.transfers.stats.transferred_tokens == 2000 + 64


def test_conditional_prefills_locally_while_the_prefill_pool_is_backed_up():
    workload = Workload([RequestSpec(f"b{i}", 0.0, 3000, 5) for i in range(5)], "burst", "test")
    rule = RecordingRule(DisaggregationRule("conditional", min_remote_prefill_tokens=500, max_prefill_queue=2))
    fleet = fleet_of(["prefill", "decode"], rule=rule)
    fleet.run(workload)
    assert sum(rule.remote.values()) == 2
    assert (fleet.transfers.stats.remote_prefills, fleet.transfers.stats.local_prefills) == (2, 3)


def test_an_import_without_room_recomputes_its_prompt_and_completes():
    workload = Workload([RequestSpec(f"r{i}", 0.01 * i, 1500, 200) for i in range(3)], "tight", "test")
    fleet = fleet_of(["prefill", "decode"], decode_kv_tokens=2500)
    records = fleet.run(workload)
    assert fleet.replicas[1].num_import_recomputes >= 1
    assert all(record.success and record.output_tokens == 200 for record in records)
    assert_all_done_and_free(fleet)


def test_speculative_decode_replicas_take_imported_requests():
    config = ReplicaConfig(speculative=SpeculativeConfig("ngram", num_speculative_tokens=3),
                           spec_acceptance=AcceptanceModel(rate=0.6, seed=1))
    workload = synthetic_workload(30, 40, prompt_len="uniform:20:600", output_len="uniform:1:60", seed=6)
    fleet = fleet_of(["prefill", "decode", "decode"], config=config)
    records = fleet.run(workload)
    assert {record.request_id: record.output_tokens for record in records} == \
        {spec.request_id: spec.output_tokens for spec in workload}
    assert sum(one.speculation.stats.num_accepted_tokens for one in fleet.replicas[1:]) > 0
    assert fleet.replicas[0].speculation.stats.num_drafts == 0  # a one-token prefill never drafts
    assert_all_done_and_free(fleet)


def test_a_single_token_answer_ends_when_its_kv_lands():
    fleet = fleet_of(["prefill", "decode"])
    [record] = fleet.run(Workload([RequestSpec("one", 0.0, 300, 1)], "one", "test"))
    assert record.output_tokens == 1 and record.end_s == record.first_token_s
    assert_all_done_and_free(fleet)


def test_a_fleet_with_prefill_replicas_needs_a_rule_and_a_decode_replica():
    with pytest.raises(ValueError, match="needs a Disaggregation"):
        SimFleet([replica("p", "prefill"), replica("d", "decode")], make_policy("least_loaded"))
    with pytest.raises(ValueError, match="decode or mixed replica"):
        SimFleet([replica("p", "prefill")], make_policy("least_loaded"), disaggregation=Disaggregation(LINK))


def test_a_fleet_spec_with_roles_parses():
    fleet = parse_fleet_spec("h100:2:prefill, h100:6:Decode,l4")
    assert fleet == [FleetEntry(CATALOG["h100"], 2, "prefill"), FleetEntry(CATALOG["h100"], 6, "decode"),
                     FleetEntry(CATALOG["l4"], 1, "mixed")]
    perf = {"h100": LinearPerf(), "l4": LinearPerf()}
    ids = [r.replica_id for r in build_replicas(fleet, perf, ReplicaConfig(), 8192)]  # type: ignore[arg-type]
    assert ids[:3] == ["h100-prefill-0", "h100-prefill-1", "h100-decode-0"] and ids[-1] == "l4-0"
    assert default_link_kind(fleet) == "ethernet"  # L4s have no NVLink
    assert default_link_kind(fleet[:2]) == "nvlink"  # 8 GPUs: one node
    assert default_link_kind(parse_fleet_spec("h100:2:prefill,h100:7:decode")) == "infiniband"
    assert default_link_kind(parse_fleet_spec("l4:4")) == "pcie" and default_link_kind(parse_fleet_spec("cpu")) == \
        "ethernet"


@pytest.mark.parametrize("spec, fragment", [
    ("h100:2:prefil", "bad role in fleet entry 'h100:2:prefil'"),
    ("h100:2:", "bad role"),
    ("h100:2:prefill:x", "bad role"),
    ("h100:2:decode,h100-sxm:1:decode", "appears twice with role 'decode'"),
])
def test_a_bad_role_is_refused(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_fleet_spec(spec)


def test_sim_reports_remote_and_local_prefills(tmp_path, model_config, capsys):
    out = tmp_path / "sim.json"
    code = main(["sim", "--synthetic", "rate=20,n=60,prompt=uniform:64:3000,output=uniform:8:64", "--fleet",
                 "h100:1:prefill,h100:2:decode", "--model-config", str(model_config), "--kv-link", "ethernet",
                 "--min-remote-prefill-tokens", "1000", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    stats = result["sim"]["disaggregation"]
    assert stats["link"] == "ethernet" and stats["remote_prefills"] > 0 and stats["local_prefills"] > 0
    assert stats["remote_prefills"] + stats["local_prefills"] == 60 and stats["mean_transfer_s"] > 0
    assert result["config"]["disaggregation"]["min_remote_prefill_tokens"] == 1000
    assert set(result["sim"]["hardware"]) == {"h100:prefill", "h100:decode"}
    assert "remote prefills" in capsys.readouterr().out


def test_sim_refuses_disaggregation_flags_without_roles(model_config, capsys):
    code = main(["sim", "--synthetic", "rate=1,n=5", "--fleet", "h100:2", "--model-config", str(model_config),
                 "--disaggregation", "always"])
    assert code == 2
    assert "--disaggregation need replica roles in --fleet" in capsys.readouterr().err
