import pytest

from fleetserve.fleet.policies import make_policy
from fleetserve.perf.model import StepShape
from fleetserve.sim.config import ReplicaConfig
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload.spec import RequestSpec, Workload

from sim_helpers import LinearPerf, make_replicas


def run_one(prompt: int, output: int, config: ReplicaConfig | None = None, skip: bool = True,
            perf: LinearPerf | None = None):
    perf = perf or LinearPerf()
    fleet = SimFleet(make_replicas(1, perf, config, skip), make_policy("round_robin"))
    workload = Workload([RequestSpec("only", 2.0, prompt, output)], "one", "test")
    return fleet.run(workload)[0], perf


@pytest.mark.parametrize("skip", [True, False])
def test_one_request_alone_takes_its_prefill_then_its_decode_steps(skip):
    record, perf = run_one(100, 6, skip=skip)
    prefill = perf.step_time(StepShape(100, 0, 100, 1))
    decodes = [perf.step_time(StepShape(0, 1, 100 + i)) for i in range(1, 6)]
    assert record.success and record.output_tokens == 6
    assert record.sent_s == 2.0
    assert record.first_token_s - record.sent_s == pytest.approx(prefill, rel=1e-12)
    assert record.end_s - record.sent_s == pytest.approx(prefill + sum(decodes), rel=1e-12)
    assert len(record.token_times_s) == 6


def test_a_long_prompt_is_prefilled_in_chunks_of_the_token_budget():
    record, perf = run_one(1200, 2)
    chunks = [perf.step_time(StepShape(512, 0, 512, 1)), perf.step_time(StepShape(512, 0, 1024, 1)),
              perf.step_time(StepShape(176, 0, 1200, 1))]
    assert record.first_token_s - record.sent_s == pytest.approx(sum(chunks), rel=1e-12)
    assert record.end_s - record.first_token_s == pytest.approx(perf.step_time(StepShape(0, 1, 1201)), rel=1e-12)


def test_a_lone_last_prompt_token_is_priced_as_a_decode_as_the_runner_batches_it():
    record, perf = run_one(1025, 1)
    steps = [StepShape(512, 0, 512, 1), StepShape(512, 0, 1024, 1), StepShape(0, 1, 1025)]
    assert record.end_s - record.sent_s == pytest.approx(sum(perf.step_time(s) for s in steps), rel=1e-12)


def test_too_long_for_the_context_is_refused_like_the_server_does():
    record, _ = run_one(8000, 500)
    assert not record.success and record.error_kind == "http_status_400"
    assert "8500" in record.error and "8192" in record.error
    assert record.end_s == record.sent_s


def test_too_big_for_the_whole_kv_cache_is_refused_with_the_schedulers_reason():
    record, _ = run_one(3000, 100, perf=LinearPerf(kv_tokens=2048))
    assert not record.success and record.error_kind == "http_status_400"
    assert "KV blocks" in record.error


def test_a_full_waiting_queue_answers_429():
    fleet = SimFleet(make_replicas(1, config=ReplicaConfig(max_num_seqs=1, max_queue=2)), make_policy("round_robin"))
    specs = [RequestSpec(f"q{i}", 0.0, 50, 50) for i in range(5)]
    records = fleet.run(Workload(specs, "burst", "test"))
    # the first starts at once; the next two wait (max_queue 2); the rest are turned away
    assert [r.error_kind for r in records] == [None, None, None, "http_status_429", "http_status_429"]
    assert all(r.end_s is not None for r in records)
