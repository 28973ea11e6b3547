"""The scaling loop's bookkeeping, with a real router state and fake OpenAI backends for replicas (no
model): registering started replicas, serving from the first health check, scaling up and draining,
replicas that exit on their own, replica-hours and cost, and the `serve` flags that configure it."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetserve.cli import build_parser
from fleetserve.commands.autoscale_arguments import make_autoscaler
from fleetserve.commands.serve_fleet import fleet_plan, wants_fleet
from fleetserve.fleet.autoscale_slo import SLOPredictor
from fleetserve.fleet.autoscaler import Autoscaler, AutoscalerConfig, ScaleDecision
from fleetserve.fleet.config import RouterConfig
from fleetserve.fleet.replica_provider import StartedReplica
from fleetserve.fleet.request_info import describe_call
from fleetserve.fleet.router_state import RouterState
from fleetserve.fleet.scaling_loop import ReplicaSpec, ScalingLoop
from fleetserve.fleet.scaling_metrics import FleetLedger

from fleet_helpers import FakeBackend, parse_metrics

PROFILE = Path(__file__).resolve().parents[2] / "benchmarks/results/profile_cpu_t1.json"  # the default model, 1 thread


class FakeProvider:
    """Each start is a fake backend; `stop` and `exited` are recorded, not real."""

    def __init__(self, url_known: bool = True) -> None:
        self.backends: list[FakeBackend] = []
        self.stopped: list[str] = []
        self.gone: set[str] = set()
        self.url_known = url_known

    def start(self, pool: str | None = None, role: str = "mixed") -> StartedReplica:
        backend = FakeBackend(name=f"r{len(self.backends)}")
        self.backends.append(backend)
        return StartedReplica(f"r{len(self.backends) - 1}", backend.url if self.url_known else "", pool, role,
                              handle=backend)

    def url_of(self, replica: StartedReplica) -> str:
        return replica.handle.url if self.url_known else ""  # type: ignore[union-attr]

    def exited(self, replica: StartedReplica) -> bool:
        return replica.replica_id in self.gone or replica.replica_id in self.stopped

    def stop(self, replica: StartedReplica, timeout_s: float) -> None:
        self.stopped.append(replica.replica_id)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def with_loop(test, autoscaler: Autoscaler | None = None, initial: int = 1, price: float = 0.0,
              url_known: bool = True, pool: str | None = None):
    """Run `test(loop, provider)` against a started router state whose replicas come from a FakeProvider."""
    provider = FakeProvider(url_known)

    async def main() -> None:
        router = RouterState(RouterConfig(tokenizer=None, health_interval_s=0.05), None)
        await router.start()
        gone: list[bool] = []
        loop = ScalingLoop(router, provider, [ReplicaSpec(pool)] * initial, autoscaler, 1.0, FleetLedger(price),
                           on_fleet_gone=lambda: gone.append(True))
        loop.gone = gone  # type: ignore[attr-defined]
        try:
            await test(loop, provider)
        finally:
            await router.stop()

    try:
        asyncio.run(main())
    finally:
        provider.close()


async def eventually(predicate, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_started_replicas_are_registered_and_serve_from_their_first_health_check():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()] * 2, 0.0, "initial")
        assert [r.url for r in loop.router.registry] == [b.url for b in provider.backends]
        await eventually(lambda: loop.states()["serving"] == 2)
        assert loop.states() == {"serving": 2, "starting": 0, "draining": 0}
        serving = [e for e in loop.ledger.events if e["event"] == "serving"]
        assert [e["replica"] for e in serving] == ["r0", "r1"] and all(e["cause"] == "initial" for e in serving)
        assert loop.ledger.scale_ups_s == []  # the initial start is not a scale-up
    with_loop(test, initial=0)


def test_a_replica_whose_url_comes_later_counts_as_starting_until_registered():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()], 0.0, "initial")
        assert len(loop.router.registry) == 0 and loop.states()["starting"] == 1
        assert loop.load(1.0).starting == 1 and loop.load(1.0).serving.replicas == ()
        provider.url_known = True
        await loop.housekeeping()
        await eventually(lambda: loop.states() == {"serving": 1, "starting": 0, "draining": 0})
    with_loop(test, initial=0, url_known=False)


def test_scale_up_records_the_time_to_serving_and_scale_down_drains_then_stops():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()], 0.0, "initial")
        await eventually(lambda: loop.states()["serving"] == 1)
        await loop.scale(ScaleDecision(2, start=1, reason="test"))
        await eventually(lambda: loop.states()["serving"] == 2)
        assert len(loop.ledger.scale_ups_s) == 1 and loop.ledger.scale_ups_s[0] > 0
        busy = loop.router.registry.get("r1")
        ticket = busy.begin(10, 10, 0.0)  # a request still in flight on the replica to drain
        await loop.scale(ScaleDecision(1, drain=("r1",), reason="test"))
        await loop.housekeeping()
        assert busy.draining and "r1" in loop.router.registry and provider.stopped == []
        assert loop.states() == {"serving": 1, "starting": 0, "draining": 1}
        busy.finish(ticket)
        await loop.housekeeping()
        await eventually(lambda: provider.stopped == ["r1"] and "r1" not in loop.managed)
        assert "r1" not in loop.router.registry
        kinds = [e["event"] for e in loop.ledger.events]
        assert kinds.index("scale_up") < kinds.index("scale_down") < kinds.index("removed") < kinds.index("stopped")
        samples = parse_metrics(loop.router.metrics.render().decode())
        assert samples['fleetserve:fleet_scale_decisions_total{direction="up"}'] == 1
        assert samples['fleetserve:fleet_scale_decisions_total{direction="down"}'] == 1
        assert samples['fleetserve:fleet_replicas{state="serving"}'] == 1
        assert samples["fleetserve:fleet_last_scale_up_seconds"] == loop.ledger.scale_ups_s[0]
        assert samples["fleetserve:fleet_desired_replicas"] == 1
    with_loop(test, initial=0)


def test_an_operator_drain_of_a_replica_stops_it_too():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()] * 2, 0.0, "initial")
        await eventually(lambda: loop.states()["serving"] == 2)
        loop.router.drain("r0")
        await loop.housekeeping()
        await eventually(lambda: provider.stopped == ["r0"])
        assert [r.replica_id for r in loop.router.registry] == ["r1"]
    with_loop(test, initial=0)


def test_replicas_that_exit_on_their_own_leave_the_router_and_the_last_one_stops_it():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()] * 2, 0.0, "initial")
        provider.gone.add("r0")
        await loop.housekeeping()
        assert [r.replica_id for r in loop.router.registry] == ["r1"] and loop.unexpected_exits == 1
        assert loop.gone == []  # type: ignore[attr-defined]
        provider.gone.add("r1")
        await loop.housekeeping()
        assert len(loop.router.registry) == 0 and loop.gone == [True]  # type: ignore[attr-defined]
    with_loop(test, initial=0)


def test_the_loop_asks_the_autoscaler_and_starts_what_it_decides():
    config = AutoscalerConfig(min_replicas=2, max_replicas=3, interval_s=0.05, upscale_delay_s=0)

    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        async with loop.running():
            await eventually(lambda: loop.states()["serving"] == 2)  # the initial one, then one for the minimum
        starts = [e for e in loop.ledger.events if e["event"] == "started"]
        assert [e["cause"] for e in starts] == ["initial", "scale_up"]
        assert loop.describe()["autoscaler"]["min_replicas"] == 2 and loop.describe()["desired"] == 2
    with_loop(test, Autoscaler(config))


def test_the_load_carries_what_the_router_has_routed_counting_first_attempts_only():
    async def test(loop: ScalingLoop, provider: FakeProvider) -> None:
        await loop.start_replicas([ReplicaSpec()] * 2, 0.0, "initial")
        await eventually(lambda: loop.states()["serving"] == 2)
        call = describe_call("completions", b'{"prompt": "Hello there", "max_tokens": 7}', None, 256, None, {})
        first = loop.router.choose(call, "least_loaded", set(), {})
        loop.router.choose(call, "least_loaded", {first.replica.replica_id}, {})  # a retry elsewhere
        arrived = loop.load(1.0).arrived
        assert arrived is not None and (arrived.requests, arrived.output_tokens) == (1, 7)
        assert arrived.prompt_tokens == call.prompt_tokens > 0
    with_loop(test, initial=0)


def test_replica_hours_and_cost_use_the_catalog_price_of_a_pool_or_the_fleet_price():
    ledger = FleetLedger(replica_price_per_hour=2.0)
    ledger.replica_started("a", None, now=0.0)
    ledger.replica_started("b", "h100", now=0.0)
    ledger.replica_ended("a", now=1800.0)
    assert ledger.replica_hours(3600.0) == pytest.approx(1.5)
    assert ledger.cost(3600.0) == pytest.approx(0.5 * 2.0 + 1.0 * ledger.price_of("h100"))
    assert ledger.price_of("h100") > 0 and ledger.price_of("no-such-hardware") == 2.0


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_autoscaling_splits_the_kv_budget_and_threads_between_the_most_replicas():
    args = serve_args("--autoscale", "target", "--max-replicas", "4", "--kv-cache-memory", "1GiB", "--threads", "8",
                      "--port", "9000")
    assert wants_fleet(args)
    assert fleet_plan(args) == [(9001, 2, 256 * 2**20)]


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2", "--min-replicas", "2"], r"--min-replicas only apply with --autoscale"),
    (["--autoscale", "target", "--replicas", "5"], r"--replicas 5 .* between --min-replicas 1 and --max-replicas 4"),
    (["--autoscale", "target", "--min-replicas", "3", "--max-replicas", "2", "--replicas", "3"],
     r"--min-replicas <= --max-replicas, got 3 and 2"),
    (["--autoscale", "target", "--min-replicas", "0"], r"--min-replicas <= --max-replicas"),
    (["--autoscale", "target", "--autoscale-interval", "0"], r"--autoscale-interval must be positive"),
    (["--autoscale", "target", "--upscale-delay", "-1"], r"--upscale-delay must not be negative"),
    (["--autoscale", "slo"], r"--autoscale-slo ttft=MS,tpot=MS"),
    (["--autoscale", "slo", "--autoscale-slo", "ttft=fast"], r"--autoscale-slo: .*not a number"),
    (["--autoscale", "target", "--replicas", "2", "--roles", "prefill,decode"], r"drop --roles"),
    (["--replicas", "2", "--replica-price", "-1"], r"--replica-price must not be negative"),
    (["--autoscale", "target", "--autoscale-slo", "ttft=500"], r"--autoscale-slo only apply with --autoscale slo"),
    (["--replicas", "2", "--autoscale-perf", "p.json"], r"--autoscale-perf only apply with --autoscale"),
])
def test_bad_autoscaling_flags_are_refused_before_any_model_loads(argv, message):
    with pytest.raises(ValueError, match=message):
        fleet_plan(serve_args(*argv))


def test_autoscaling_flags_are_refused_for_a_single_server_too():
    assert not wants_fleet(serve_args())
    with pytest.raises(ValueError, match=r"--min-replicas only apply with --autoscale"):
        wants_fleet(serve_args("--min-replicas", "2"))


def test_the_slo_policy_needs_the_replicas_performance_model():
    with pytest.raises(ValueError, match=r"--autoscale slo needs --autoscale-perf PROFILE.json"):
        make_autoscaler(serve_args("--autoscale", "slo", "--autoscale-slo", "ttft=2000"))
    with pytest.raises(ValueError, match=r"profile not found: missing.json"):
        make_autoscaler(serve_args("--autoscale", "slo", "--autoscale-slo", "ttft=2000", "--autoscale-perf",
                                   "missing.json"))
    autoscaler = make_autoscaler(serve_args("--autoscale", "slo", "--autoscale-slo", "ttft=2000,tpot=100",
                                            "--autoscale-perf", str(PROFILE)))
    assert autoscaler is not None and isinstance(autoscaler.slo_model, SLOPredictor)
    assert (autoscaler.config.ttft_slo_ms, autoscaler.config.tpot_slo_ms) == (2000, 100)
