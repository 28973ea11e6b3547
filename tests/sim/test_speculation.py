import json

import pytest

from fleetserve.cli import main
from fleetserve.fleet.policies import make_policy
from fleetserve.sim.acceptance import AcceptanceDraws, AcceptanceModel
from fleetserve.sim.config import ReplicaConfig
from fleetserve.sim.fleet import SimFleet
from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.workload.spec import RequestSpec, Workload

from sim_helpers import LinearPerf, make_replicas


def spec_config(rate: float | None = None, k: int = 4, adaptive: bool = True, seed: int = 0,
                model: AcceptanceModel | None = None, **replica) -> ReplicaConfig:
    model = model or AcceptanceModel(rate=rate, seed=seed)
    speculative = SpeculativeConfig("ngram", num_speculative_tokens=k, adaptive=adaptive)
    return ReplicaConfig(speculative=speculative, spec_acceptance=model, **replica)


def run(workload: Workload, config: ReplicaConfig | None, replicas: int = 1, perf: LinearPerf | None = None,
        max_len: int = 8192):
    fleet = SimFleet(make_replicas(replicas, perf, config, max_len=max_len), make_policy("round_robin"))
    return fleet.run(workload), fleet.replicas


def one(output: int, prompt: int = 100) -> Workload:
    return Workload([RequestSpec("only", 0.0, prompt, output)], "one", "test")


def many(count: int, seed: int = 3) -> Workload:
    import random
    rng = random.Random(seed)
    return Workload([RequestSpec(f"r{i}", i * 0.01, rng.randint(16, 400), rng.randint(1, 90))
                     for i in range(count)], "many", "test")


def test_a_lone_request_accepting_every_draft_takes_one_step_per_k_plus_one_tokens():
    records, (replica,) = run(one(100), spec_config(1.0, k=4, adaptive=False))
    # The prefill samples the first token; each verification then gives 4 drafts and one more, and the last
    # one drafts only what the request still may emit (99 = 19 * 5 + 4).
    assert replica.num_steps == 1 + 20
    assert records[0].output_tokens == 100 and len(records[0].token_times_s) == 100
    stats = replica.speculation.stats
    assert stats.num_drafts == 20 and stats.num_accepted_tokens == stats.num_draft_tokens == 99 - 20


def test_adaptive_drafting_reaches_full_length_when_every_draft_is_accepted():
    _, (replica,) = run(one(100), spec_config(1.0, k=4))
    plain_steps = 100
    assert replica.num_steps <= 1 + 99 // 5 + 3 < plain_steps / 4


def test_a_verification_is_priced_as_decode_rows():
    perf = LinearPerf()
    records, _ = run(one(6, prompt=100), spec_config(1.0, k=4, adaptive=False), perf=perf)
    from fleetserve.perf.model import StepShape
    prefill = perf.step_time(StepShape(100, 0, 100, 1))
    verify = perf.step_time(StepShape(0, 5, 105, 0))  # the known token and 4 drafts, over 101..105 tokens
    assert records[0].end_s == pytest.approx(prefill + verify, rel=1e-12)
    assert records[0].token_times_s == [pytest.approx(prefill)] + [pytest.approx(prefill + verify)] * 5


def test_with_drafts_almost_never_accepted_adaptive_drafting_turns_itself_off():
    workload = many(12)
    plain, (plain_replica,) = run(workload, None)
    records, (replica,) = run(workload, spec_config(0.01))
    stats = replica.speculation.stats
    output_tokens = sum(r.output_tokens for r in records)
    assert stats.num_draft_tokens < 0.1 * output_tokens
    assert abs(replica.num_steps - plain_replica.num_steps) <= 0.02 * plain_replica.num_steps
    assert replica.busy_s == pytest.approx(plain_replica.busy_s, rel=0.05)
    # Without adaptivity every decode verifies K drafts, and pays for them.
    _, (always,) = run(workload, spec_config(0.01, adaptive=False))
    assert always.speculation.stats.num_draft_tokens > 3 * output_tokens
    assert always.busy_s > replica.busy_s


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    def outcome(seed):
        records, replicas = run(many(30), spec_config(0.6, seed=seed), replicas=2)
        return ([(r.request_id, r.first_token_s, r.end_s, tuple(r.token_times_s)) for r in records],
                [r.speculation.stats.as_dict() for r in replicas])
    assert outcome(1) == outcome(1)
    assert outcome(1) != outcome(2)


@pytest.mark.parametrize("kv_tokens", [200_000, 3_000])  # the small cache preempts
def test_every_request_gets_exactly_its_tokens_and_every_block_comes_back(kv_tokens):
    workload = many(40)
    records, replicas = run(workload, spec_config(0.7, k=6, adaptive=False, max_num_seqs=16),
                            perf=LinearPerf(kv_tokens=kv_tokens))
    by_id = {spec.request_id: spec for spec in workload}
    for record in records:
        assert record.success
        assert record.output_tokens == by_id[record.request_id].output_tokens == len(record.token_times_s)
    (replica,) = replicas
    assert replica.kv.num_free_blocks == replica.kv.num_blocks
    assert not replica.scheduler.requests and not replica.tracked
    assert not replica.acceptance.requests and not replica.speculation.lengths.acceptance
    assert replica.speculation.stats.num_accepted_tokens > 0
    if kv_tokens < 10_000:
        assert replica.scheduler.num_preemptions > 0


def test_acceptance_draws_follow_the_geometric_model():
    draws = AcceptanceDraws(AcceptanceModel(rate=0.5, seed=7))
    draws.arrive("a")
    counts = [draws.accepted("a", 3) for _ in range(4000)]
    shares = [counts.count(i) / len(counts) for i in range(4)]
    assert shares == pytest.approx([0.5, 0.25, 0.125, 0.125], abs=0.03)


def test_a_trace_list_cycles_over_requests_in_arrival_order(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text("[1.0, 0.0]")
    draws = AcceptanceDraws(AcceptanceModel.load(path))
    for request_id in ("x", "y", "z"):
        draws.arrive(request_id)
    assert [draws.accepted(r, 5) for r in ("x", "y", "z")] == [5, 0, 5]


def test_a_trace_mapping_gives_rates_by_request_id_with_a_default(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({"r1": 1.0, "*": 0.0}))
    draws = AcceptanceDraws(AcceptanceModel.load(path))
    draws.arrive("r1")
    draws.arrive("r2")
    assert (draws.accepted("r1", 4), draws.accepted("r2", 4)) == (4, 0)
    path.write_text(json.dumps({"r1": 1.0}))
    with pytest.raises(ValueError, match="'r9' has no rate"):
        AcceptanceDraws(AcceptanceModel.load(path)).arrive("r9")


@pytest.mark.parametrize("text, message", [
    ("[]", "non-empty JSON list"), ('{"a": "high"}', "non-empty JSON list"), ("[0.5, 1.5]", "got 1.5"),
    ("[0.5,", "not valid JSON"),
])
def test_a_bad_trace_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "rates.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        AcceptanceModel.load(path)


def test_drafts_found_at_part_of_the_steps_verify_less_often():
    model = AcceptanceModel(rate=0.9, draft_availability=0.5)
    records, (replica,) = run(one(200), spec_config(model=model, adaptive=False))
    _, (always,) = run(one(200), spec_config(0.9, adaptive=False))
    assert records[0].output_tokens == 200
    decode_steps = replica.num_steps - 1  # after the prefill
    assert replica.speculation.stats.num_drafts / decode_steps == pytest.approx(0.5, abs=0.15)
    # Every decode verifies, but for the last token, which is never drafted past.
    assert always.speculation.stats.num_drafts >= always.num_steps - 2


def test_sim_reports_speculation(tmp_path, model_config, capsys):
    out = tmp_path / "sim.json"
    code = main(["sim", "--synthetic", "rate=20,n=30,prompt=uniform:64:256,output=uniform:8:64", "--fleet", "h100:1",
                 "--model-config", str(model_config), "--speculative-config", '{"method": "ngram", '
                 '"num_speculative_tokens": 4}', "--spec-acceptance", "0.8", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "accepted per verification" in capsys.readouterr().out
    result = json.loads(out.read_text())
    speculation = result["sim"]["speculation"]
    assert speculation["num_accepted_tokens"] > 0 and 0 < speculation["acceptance_rate"] <= 1
    assert result["config"]["replica"]["spec_acceptance"]["rate"] == 0.8


@pytest.mark.parametrize("args, message", [
    (["--spec-acceptance", "0.5"], "--spec-acceptance needs --speculative-config"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}'], "--spec-acceptance RATE"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}', "--spec-acceptance", "1.5"],
     "must be in (0, 1]"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}', "--spec-acceptance", "0"],
     "must be in (0, 1]"),
    (["--speculative-config", '{"method": "eagle"}', "--spec-acceptance", "0.5"], "not known"),
    (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4}', "--spec-acceptance-trace",
      "{missing}"], "acceptance trace not found"),
])
def test_bad_speculation_flags_are_clear_errors(tmp_path, model_config, capsys, args, message):
    args = [str(tmp_path / "nope.json") if arg == "{missing}" else arg for arg in args]
    try:
        code = main(["sim", "--synthetic", "rate=1,n=5", "--fleet", "h100:1", "--model-config", str(model_config),
                     *args])
    except SystemExit as exit:  # argparse's own check of a flag's value
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
