"""The goodput search: DistServe's highest rate at the target SLO attainment, per GPU, over prefill:decode splits."""
import json

import pytest

from fleetserve.bench.metrics import SLO
from fleetserve.cli import main
from fleetserve.fleet.policies import make_policy
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.goodput import GoodputSearch, RateTrials, at_rate, find_goodput, ratio_search, splits
from fleetserve.sim.simulate import simulate
from fleetserve.workload.synthetic import synthetic_workload

BALANCED = SLO(ttft_ms=400, tpot_ms=30)


@pytest.fixture
def trials(llama3_8b) -> RateTrials:
    """Two simulated H100s serving 200 requests of 300-1,500 prompt tokens and 20-200 output tokens."""
    fleet = parse_fleet_spec("h100:2")
    perf = {"h100": RooflineModel(llama3_8b, fleet[0][0])}
    workload = synthetic_workload(200, rate=10, prompt_len="uniform:300:1500", output_len="uniform:20:200", seed=3)

    def run(shaped):
        return simulate(shaped, fleet, perf, make_policy("least_loaded"), 8192, ReplicaConfig(),
                        SimOptions(record_token_times=False)).records

    return RateTrials(workload, run)


def test_the_found_rate_meets_the_attainment_and_a_clearly_higher_one_does_not(trials):
    search = GoodputSearch(BALANCED, attainment=0.9, start_rate=8, iterations=5)
    found = find_goodput(lambda rate: trials.attainment_at(rate, BALANCED), 2, search)
    assert found.rate > 0
    assert found.attainment == trials.attainment_at(found.rate, BALANCED) >= 0.9
    assert trials.attainment_at(found.rate * 1.5, BALANCED) < 0.9
    assert found.per_gpu == found.rate / 2
    assert (found.rate, found.attainment) in found.trials


def test_a_looser_slo_never_gives_a_lower_goodput(trials):
    slos = [SLO(ttft_ms=150, tpot_ms=15), SLO(ttft_ms=150, tpot_ms=40), SLO(ttft_ms=400, tpot_ms=40),
            SLO(ttft_ms=2000, tpot_ms=100)]
    rates = [find_goodput(lambda rate, slo=slo: trials.attainment_at(rate, slo), 2,
                          GoodputSearch(slo, start_rate=8, iterations=4)).rate for slo in slos]
    assert rates == sorted(rates)
    assert rates[0] < rates[-1]


def test_the_bisection_narrows_to_the_edge_of_a_known_curve():
    def attainment(rate: float) -> float:
        return 1.0 if rate <= 37.0 else 0.5

    found = find_goodput(attainment, 4, GoodputSearch(BALANCED, start_rate=1, iterations=8))
    assert 37.0 - 32.0 / 2**8 <= found.rate <= 37.0
    assert found.per_gpu == pytest.approx(found.rate / 4)
    halving = find_goodput(attainment, 1, GoodputSearch(BALANCED, start_rate=100, iterations=8))
    assert 37.0 - 50.0 / 2**8 <= halving.rate <= 37.0


def test_an_slo_missed_at_every_rate_gives_zero_and_an_unloadable_workload_is_an_error():
    never = find_goodput(lambda rate: 0.0, 8, GoodputSearch(BALANCED, max_steps=3))
    assert never.rate == 0 and never.attainment is None and never.per_gpu == 0 and len(never.trials) == 4
    with pytest.raises(ValueError, match="too short to load the fleet"):
        find_goodput(lambda rate: 1.0, 8, GoodputSearch(BALANCED, max_steps=3))


def test_arrivals_are_stretched_to_the_rate_or_drawn_poisson_when_all_at_once():
    workload = synthetic_workload(200, rate=5, seed=1)
    faster = at_rate(workload, 20)
    assert (len(faster) - 1) / faster.duration_s == pytest.approx(20)
    factor = workload.duration_s / faster.duration_s
    assert [s.arrival_s * factor for s in faster] == pytest.approx([s.arrival_s for s in workload])
    burst = synthetic_workload(200, rate=float("inf"), seed=1)
    spread = at_rate(burst, 10, seed=2)
    assert 7 < (len(spread) - 1) / spread.duration_s < 13
    assert [s.arrival_s for s in at_rate(burst, 20, seed=2)] == pytest.approx([s.arrival_s / 2 for s in spread])


def test_the_ratio_search_tries_every_split_and_picks_the_best():
    assert splits(8) == [(1, 7), (2, 6), (3, 5), (4, 4), (5, 3), (6, 2), (7, 1)]
    with pytest.raises(ValueError, match="at least 2 devices"):
        splits(1)

    def goodput_of(prefill: int, decode: int):
        # A made-up fleet whose goodput peaks at 3 prefill : 5 decode.
        return find_goodput(lambda rate: 1.0 if rate <= 10 * min(prefill / 3, decode / 5) else 0.0,
                            prefill + decode, GoodputSearch(BALANCED, start_rate=1, iterations=6))

    result = ratio_search(8, goodput_of)
    assert result.best == (3, 5)
    assert len(result.table) == 7
    assert result.to_jsonable()["best"]["prefill"] == 3


def test_the_search_settings_are_checked():
    with pytest.raises(ValueError, match="needs an SLO"):
        GoodputSearch(SLO())
    with pytest.raises(ValueError, match="attainment"):
        GoodputSearch(BALANCED, attainment=1.5)


def test_sim_goodput_writes_the_goodput_and_the_split_table(tmp_path, model_config, capsys):
    out = tmp_path / "goodput.json"
    code = main(["sim", "--synthetic", "rate=10,n=120,prompt=uniform:500:2000,output=uniform:20:100,seed=2",
                 "--fleet", "h100:1:prefill,h100:2:decode", "--model-config", str(model_config),
                 "--slo", "ttft=400,tpot=30", "--goodput", "--goodput-ratios", "--goodput-start-rate", "8",
                 "--goodput-iterations", "2", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["attainment"] == 0.9
    assert result["goodput"]["per_gpu"] == result["goodput"]["rate"] / 3 > 0
    assert [(row["prefill"], row["decode"]) for row in result["ratios"]["table"]] == [(1, 2), (2, 1)]
    best = result["ratios"]["best"]
    assert best["rate"] == max(row["rate"] for row in result["ratios"]["table"])


@pytest.mark.parametrize(("args", "message"), [
    (["--goodput"], "--goodput needs --slo"),
    (["--goodput", "--slo", "ttft=100", "--plot", "x"], "--plot cannot be used with --goodput"),
    (["--goodput-ratios", "--slo", "ttft=100"], "--goodput-ratios goes with --goodput"),
])
def test_sim_goodput_flags_are_checked(model_config, capsys, args, message):
    assert main(["sim", "--synthetic", "rate=1,n=5", "--fleet", "h100:2", "--model-config", str(model_config),
                 *args]) == 2
    assert message in capsys.readouterr().err
