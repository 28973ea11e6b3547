"""The autoscaler (fleetserve.fleet.autoscaler) on its own, and driving a simulated fleet on the virtual clock:
step changes of load give the replica timeline each policy should, with its delays, cooldown and cold start."""
from __future__ import annotations

import json
import math

import pytest

from fleetserve.fleet.autoscale_slo import SLOPredictor
from fleetserve.fleet.autoscaler import (
    ArrivalCounts,
    Autoscaler,
    AutoscalerConfig,
    FleetLoad,
    TrafficWindow,
)
from fleetserve.fleet.policies import make_policy
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState
from fleetserve.perf.cold_start import ColdStart, model_weight_bytes
from fleetserve.perf.hardware import get_hardware, parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.autoscaling import SimAutoscaler
from fleetserve.sim.config import Autoscaling
from fleetserve.sim.fleet import SimFleet
from fleetserve.sim.simulate import simulate
from fleetserve.workload.spec import RequestSpec, Workload

from sim_helpers import LinearPerf, make_replicas


def snapshot(*in_flight: int) -> FleetSnapshot:
    return FleetSnapshot(tuple(ReplicaState(f"r{i}", in_flight=n) for i, n in enumerate(in_flight)))


def config(**overrides) -> AutoscalerConfig:
    values = dict(min_replicas=1, max_replicas=4, interval_s=5.0, target_ongoing_requests=2.0,
                  upscale_delay_s=10.0, downscale_delay_s=30.0)
    return AutoscalerConfig(**{**values, **overrides})


# --- the decision object ----------------------------------------------------------------------------------


def test_a_higher_count_waits_for_the_upscale_delay_then_starts_the_difference():
    scaler = Autoscaler(config())
    assert scaler.decide(FleetLoad(0.0, snapshot(8))).start == 0  # wanted 4 since 0
    assert scaler.decide(FleetLoad(5.0, snapshot(8))).start == 0
    decision = scaler.decide(FleetLoad(10.0, snapshot(8)))
    assert decision.desired == 4 and decision.start == 3 and decision.drain == ()


def test_a_dip_restarts_the_delay():
    scaler = Autoscaler(config())
    scaler.decide(FleetLoad(0.0, snapshot(8)))
    scaler.decide(FleetLoad(5.0, snapshot(2)))  # wants 1 == current: the pending change is dropped
    assert scaler.decide(FleetLoad(10.0, snapshot(8))).start == 0
    assert scaler.decide(FleetLoad(20.0, snapshot(8))).start == 3


def test_replicas_starting_count_as_ordered_so_a_long_cold_start_does_not_stack():
    scaler = Autoscaler(config(upscale_delay_s=0.0))
    assert scaler.decide(FleetLoad(0.0, snapshot(8))).start == 3
    for now in (5.0, 10.0, 15.0):  # the three are still starting
        assert scaler.decide(FleetLoad(now, snapshot(8), starting=3)).start == 0


def test_the_bounds_hold():
    scaler = Autoscaler(config(upscale_delay_s=0.0, downscale_delay_s=0.0, min_replicas=2, max_replicas=3))
    assert scaler.decide(FleetLoad(0.0, snapshot(100, 100))).desired == 3
    assert scaler.decide(FleetLoad(5.0, snapshot(0, 0, 0))).drain == ("r0",)
    with pytest.raises(ValueError, match="min_replicas"):
        AutoscalerConfig(min_replicas=5, max_replicas=2)


def test_scaling_in_waits_its_delay_and_drains_the_least_loaded():
    scaler = Autoscaler(config())
    assert scaler.decide(FleetLoad(0.0, snapshot(1, 0, 2))).drain == ()
    assert scaler.decide(FleetLoad(29.0, snapshot(1, 0, 2))).drain == ()
    decision = scaler.decide(FleetLoad(30.0, snapshot(1, 0, 2)))
    assert decision.desired == 2 and decision.drain == ("r1",)


def test_no_replica_drains_while_others_start():
    scaler = Autoscaler(config(downscale_delay_s=0.0))
    assert scaler.decide(FleetLoad(0.0, snapshot(0, 0, 0), starting=1)).drain == ()
    assert scaler.decide(FleetLoad(5.0, snapshot(0, 0, 0))).drain == ("r0", "r1")


def test_the_cooldown_spaces_actions():
    scaler = Autoscaler(config(upscale_delay_s=0.0, cooldown_s=60.0))
    assert scaler.decide(FleetLoad(0.0, snapshot(4))).start == 1
    assert scaler.decide(FleetLoad(5.0, snapshot(4, 4))).start == 0  # wants 4, but within the cooldown
    assert scaler.pending is not None and scaler.pending[0] == 1
    assert scaler.decide(FleetLoad(60.0, snapshot(4, 4))).start == 2


def test_the_slo_policy_needs_a_predictor_and_a_target():
    with pytest.raises(ValueError, match="SLOPredictor"):
        Autoscaler(AutoscalerConfig(policy="slo", ttft_slo_ms=500))
    with pytest.raises(ValueError, match="TTFT or TPOT"):
        AutoscalerConfig(policy="slo")


def test_the_traffic_window_turns_counts_into_a_rate_and_mean_lengths():
    window = TrafficWindow(30.0)
    assert window.observe(0.0, ArrivalCounts(0, 0, 0)).rate == 0
    traffic = window.observe(10.0, ArrivalCounts(50, 50_000, 10_000))
    assert (traffic.rate, traffic.prompt_tokens, traffic.output_tokens) == (5.0, 1000.0, 200.0)
    window.observe(40.0, ArrivalCounts(60, 55_000, 12_000))  # 10 requests in the 30 s since 10 s
    # Over the window (since 10 s) 20 requests in 40 s, but 10 in the last 10 s: a rise counts at once.
    traffic = window.observe(50.0, ArrivalCounts(70, 60_000, 14_000))
    assert traffic.rate == pytest.approx(10 / 10) and traffic.prompt_tokens == pytest.approx(10_000 / 20)
    assert window.observe(80.0, ArrivalCounts(70, 60_000, 14_000)).rate == 0  # nothing in the last 30 s


def test_the_slo_policy_scales_out_at_once_but_in_only_on_the_peak_of_its_hold():
    perf = LinearPerf()
    slo = config(policy="slo", ttft_slo_ms=400.0, tpot_slo_ms=100.0, upscale_delay_s=0.0, downscale_delay_s=0.0,
                 max_replicas=8, rate_window_s=10.0)
    scaler = Autoscaler(slo, SLOPredictor(perf, 512, 64))  # type: ignore[arg-type]
    one = snapshot(0)
    assert scaler.decide(FleetLoad(0.0, one, arrived=ArrivalCounts(0, 0, 0))).desired == 1
    high = scaler.decide(FleetLoad(10.0, one, arrived=ArrivalCounts(400, 80_000, 8_000)))  # 40 req/s
    assert high.desired >= 2 and high.start == high.desired - 1  # out at once
    fleet = snapshot(*[0] * high.desired)
    # No more arrivals: the count wanted at 10 s holds for two rate windows (to 30 s), though the rate falls
    # out of its window by 20 s; then the fleet shrinks, the last rate-window reading (15 s) leaving at 35 s.
    for now in (15.0, 20.0, 25.0):
        decision = scaler.decide(FleetLoad(now, fleet, arrived=ArrivalCounts(400, 80_000, 8_000)))
        assert decision.desired == high.desired and not decision.drain
    assert "holding" in decision.reason
    assert scaler.decide(FleetLoad(30.0, fleet, arrived=ArrivalCounts(400, 80_000, 8_000))).desired < high.desired
    decision = scaler.decide(FleetLoad(35.0, fleet, arrived=ArrivalCounts(400, 80_000, 8_000)))
    assert decision.desired == 1 and len(decision.drain) == high.desired - 1


def test_the_predictor_needs_more_replicas_as_the_rate_grows(llama3_8b):
    predictor = SLOPredictor(RooflineModel(llama3_8b, get_hardware("a100")), 512, 64)
    light, heavy = predictor.predict(1.0, 1000, 200), predictor.predict(8.0, 1000, 200)
    assert light.ttft_s < heavy.ttft_s and light.tpot_s <= heavy.tpot_s
    assert predictor.predict(100.0, 1000, 200).overloaded  # far past the replica's prefill capacity


# --- the simulated fleet ----------------------------------------------------------------------------------


class RecordingPolicy:
    """least_loaded, remembering where and when it sent each request."""
    name = "recording"

    def __init__(self) -> None:
        self.inner = make_policy("least_loaded")
        self.fleet: SimFleet | None = None
        self.choices: list[tuple[float, str]] = []

    def choose(self, request, snapshot):
        choice = self.inner.choose(request, snapshot)
        assert self.fleet is not None
        self.choices.append((self.fleet.clock, choice))
        return choice


def step_workload() -> Workload:
    """Eight long requests at 10 s (the step), then a short one every 5 s until 300 s."""
    burst = [RequestSpec(f"long-{i}", 10.0, 100, 2000) for i in range(8)]
    trickle = [RequestSpec(f"short-{i}", 12.5 + 5 * i, 50, 5) for i in range(58)]
    return Workload(sorted(burst + trickle, key=lambda spec: spec.arrival_s), "step", "test")


def run_fleet(scaler_config: AutoscalerConfig, cold_start_s: float, predictor=None):
    policy = RecordingPolicy()
    scaler = SimAutoscaler(Autoscaler(scaler_config, predictor), cold_start_s, price_per_hour_usd=2.0)
    fleet = SimFleet(make_replicas(1), policy, scaler=scaler)  # type: ignore[arg-type]
    policy.fleet = fleet
    records = fleet.run(step_workload())
    scaler.finish(fleet.clock)
    changes = scaler.changes
    timeline = list(zip(changes["times_s"], changes["serving"], changes["starting"], changes["draining"]))
    return scaler, fleet, records, policy, timeline


def test_target_policy_timeline_for_a_step_with_a_cold_start_longer_than_the_interval():
    scaler, fleet, records, policy, timeline = run_fleet(config(), cold_start_s=20.0)
    # 8 in flight from 10 s: 4 wanted at the tick at 10 s, started after the 10 s delay, serving 20 s later.
    assert timeline[:3] == [(0.0, 1, 0, 0), (20.0, 1, 3, 0), (40.0, 4, 0, 0)]
    assert scaler.peak_alive == 4 and sum(1 for a in scaler.actions if a["state"] == "starting") == 3
    # The long requests all went to the one replica serving at 10 s; once they end, the count the policy wants
    # falls to 1 and, 30 s (the downscale delay) later, at a decision, three replicas drain.
    long_end = max(r.end_s for r in records if r.request_id.startswith("long"))
    drains = [a for a in scaler.actions if a["state"] == "draining"]
    assert len(drains) == 3
    drain_s = drains[0]["time_s"]
    assert long_end + 30.0 <= drain_s <= long_end + 30.0 + 2 * 5.0 and drain_s % 5.0 == 0
    assert timeline[-1][1:] == (1, 0, 0)
    assert all(r.success and r.end_s is not None for r in records)
    # GPU-hours: the integral of the replicas alive.
    alive_s = 1 * fleet.clock + 3 * (drain_s - 20.0) + sum(
        a["time_s"] - drain_s for a in scaler.actions if a["state"] == "stopped")
    assert scaler.stats(fleet.clock)["gpu_hours"] == pytest.approx(alive_s / 3600)


def test_draining_replicas_take_no_new_requests_and_finish_their_own():
    scaler, fleet, records, policy, _ = run_fleet(config(downscale_delay_s=10.0), cold_start_s=5.0)
    order = {a["replica"]: a["time_s"] for a in scaler.actions if a["state"] == "draining"}
    stopped = {a["replica"]: a["time_s"] for a in scaler.actions if a["state"] == "stopped"}
    assert order and set(order) == set(stopped)
    for replica_id, drain_s in order.items():
        assert not [t for t, choice in policy.choices if choice == replica_id and t >= drain_s]
        assert stopped[replica_id] >= drain_s
    starts = [a for a in scaler.actions if a["state"] in ("starting", "serving")]
    for now, choice in policy.choices:  # nothing is routed to a replica before it serves
        served = [a["time_s"] for a in starts if a["replica"] == choice and a["state"] == "serving"]
        assert choice == "r0" or (served and min(served) <= now)
    assert all(r.success for r in records) and all(not replica.tracked for replica in fleet.replicas)


def test_a_cooldown_delays_the_scale_in_after_a_scale_out():
    _, _, _, _, quick = run_fleet(config(downscale_delay_s=0.0), cold_start_s=20.0)
    scaler, _, _, _, slow = run_fleet(config(downscale_delay_s=0.0, cooldown_s=200.0), cold_start_s=20.0)
    first_drain = next(a["time_s"] for a in scaler.actions if a["state"] == "draining")
    assert first_drain >= 20.0 + 200.0 and first_drain % 5.0 == 0
    assert quick[:3] == slow[:3] == [(0.0, 1, 0, 0), (20.0, 1, 3, 0), (40.0, 4, 0, 0)]


def test_slo_policy_follows_a_step_of_traffic_with_the_replicas_its_prediction_needs():
    perf = LinearPerf()
    predictor = SLOPredictor(perf, 512, 64)  # type: ignore[arg-type]
    slo = config(policy="slo", ttft_slo_ms=400.0, tpot_slo_ms=100.0, upscale_delay_s=0.0, max_replicas=8,
                 rate_window_s=10.0)
    # 2 req/s for 60 s, 40 req/s for 60 s, then 2 req/s again, prompts of 200 tokens and answers of 20.
    specs, now, index = [], 0.0, 0
    for rate, until in ((2.0, 60.0), (40.0, 120.0), (2.0, 300.0)):
        while now < until:
            specs.append(RequestSpec(f"q{index}", now, 200, 20))
            now, index = now + 1 / rate, index + 1
    scaler = SimAutoscaler(Autoscaler(slo, predictor), 10.0, price_per_hour_usd=2.0)
    fleet = SimFleet(make_replicas(1, perf), make_policy("least_loaded"), scaler=scaler)
    records = fleet.run(Workload(specs, "steps", "test"))
    scaler.finish(fleet.clock)
    # 40 req/s x 200 prompt tokens = 8,000 tokens/s; a replica prefills at most 1/(1e-4) = 10,000 tokens/s, and
    # far less beside its decodes and step overheads, so the high step needs at least two replicas, and the
    # prediction at the high rate says how many exactly.
    ttft_bound_ms = slo.slo_headroom * 400.0
    needed = next(n for n in range(1, 9) if predictor.predict(40.0 / n, 200, 20).ttft_s * 1000 <= ttft_bound_ms
                  and predictor.predict(40.0 / n, 200, 20).tpot_s * 1000 <= 100.0)
    assert needed >= 2
    decisions = dict(zip(scaler.decisions["times_s"], scaler.decisions["desired"]))
    assert all(decisions[t] == 1 for t in (5.0, 30.0, 60.0))
    # The first decision of the high step also sees the queue that built on one replica, and asks for more
    # than the steady state needs; once the started replicas have worked it off and those counts have left
    # the scale-in hold (two rate windows, 20 s), the steady state is held.
    assert decisions[65.0] >= needed
    assert all(decisions[t] == needed for t in (100.0, 105.0, 110.0, 115.0, 120.0))
    # After the step the count comes down only once the high one has left the hold.
    assert decisions[125.0] == needed
    assert all(desired == 1 for t, desired in decisions.items() if t >= 145.0)
    assert scaler.changes["serving"][-1] == 1 and scaler.peak_alive >= needed
    assert all(r.success for r in records)


def test_simulate_with_autoscaling_reports_gpu_hours_at_the_catalog_price(llama3_8b):
    hardware = get_hardware("a100")
    workload = Workload([RequestSpec(f"r{i}", i * 0.5, 500, 50) for i in range(40)], "trickle", "test")
    autoscaling = Autoscaling(config(), model_weight_bytes(llama3_8b), ColdStart(fixed_s=5.0))
    run = simulate(workload, parse_fleet_spec("a100:1"), {"a100": RooflineModel(llama3_8b, hardware)},
                   make_policy("least_loaded"), 8192, autoscaling=autoscaling)
    stats = run.stats()["autoscaling"]
    assert stats["cold_start_s"] == pytest.approx(5.0 + model_weight_bytes(llama3_8b) / 7e9)
    assert stats["gpu_hours"] == pytest.approx(stats["mean_replicas"] * run.simulated_s / 3600)
    assert stats["cost_usd"] == pytest.approx(stats["gpu_hours"] * hardware.price_per_hour_usd)
    with pytest.raises(ValueError, match="autoscaling bounds"):
        simulate(workload, parse_fleet_spec("a100:6"), {"a100": RooflineModel(llama3_8b, hardware)},
                 make_policy("least_loaded"), 8192, autoscaling=autoscaling)


def test_cold_start_is_a_fixed_delay_plus_loading_at_the_slower_of_storage_and_host_link(llama3_8b):
    weights = model_weight_bytes(llama3_8b)
    assert weights == llama3_8b.num_parameters * 2
    h100 = get_hardware("h100")
    assert ColdStart(10.0, 100e9).seconds(weights, h100) == pytest.approx(10.0 + weights / 63e9)
    assert ColdStart(0.0, 2e9).seconds(weights, h100) == pytest.approx(weights / 2e9)
    with pytest.raises(ValueError, match="fixed delay"):
        ColdStart(fixed_s=-1.0)
    assert not math.isnan(ColdStart().seconds(weights, get_hardware("cpu")))



# --- the command line -------------------------------------------------------------------------------------


def test_sim_autoscale_writes_replicas_over_time_gpu_hours_and_a_plot(tmp_path, model_config, capsys):
    from fleetserve.cli import main
    out, plots = tmp_path / "sim.json", tmp_path / "plots"
    code = main(["sim", "--synthetic", "rate=12,n=600,prompt=lognormal:1000:0.8,output=lognormal:200:0.8",
                 "--fleet", "a100:1", "--model-config", str(model_config), "--slo", "ttft=1000,tpot=50",
                 "--autoscale", "slo", "--max-replicas", "4", "--cold-start", "5", "--json", str(out),
                 "--plot", str(plots)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    stats = result["sim"]["autoscaling"]
    assert result["completed"] == 600 and stats["starts"] >= 1 and 1 < stats["peak_replicas"] <= 4
    assert stats["config"]["policy"] == "slo" and stats["config"]["ttft_slo_ms"] == 1000
    assert result["config"]["autoscaling"]["cold_start"]["fixed_s"] == 5.0
    assert set(stats["timeline"]) == {"times_s", "serving", "starting", "draining"}
    assert (plots / "autoscaling.png").is_file() and "GPU-hours" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--max-replicas", "4"], "need --autoscale"),
    (["--autoscale", "slo"], "--autoscale slo holds the --slo targets"),
    (["--autoscale", "target", "--max-replicas", "2", "--fleet", "a100:3"], "outside the autoscaling bounds"),
    (["--autoscale", "target", "--fleet", "a100:1,h100:1"], "one hardware"),
])
def test_bad_autoscaling_flags_are_clear_errors(model_config, capsys, args, message):
    from fleetserve.cli import main
    if "--fleet" not in args:
        args = [*args, "--fleet", "a100:1"]
    code = main(["sim", "--synthetic", "rate=1,n=5", "--model-config", str(model_config), *args])
    assert code == 2
    assert message in capsys.readouterr().err
