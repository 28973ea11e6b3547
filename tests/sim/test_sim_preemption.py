"""A replica short of KV memory preempts in simulation exactly as the engine's Scheduler does when stepped
directly the way the engine steps it, for the same arrivals."""
import pytest

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.scheduler import Scheduler
from fleetserve.fleet.policies import make_policy
from fleetserve.perf.step_shape import shape_of
from fleetserve.sim.config import ReplicaConfig
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload.synthetic import synthetic_workload

from sim_helpers import LinearPerf, make_replicas

KV_TOKENS = 2400
CONFIG = ReplicaConfig(max_num_seqs=16, max_num_batched_tokens=256)


def engine_like_run(workload, perf):
    """The engine's loop with a virtual clock: requests that arrived by a step's start join it; the step
    lasts as the perf model says; every sampling request gets a dummy token."""
    kv = KVCacheManager(KV_TOKENS // CONFIG.block_size, CONFIG.block_size)
    scheduler = Scheduler(CONFIG.scheduler_config(8192), kv)
    pending = list(workload)
    now, preemptions, first_token, end = 0.0, [], {}, {}
    while pending or scheduler.has_unfinished():
        while pending and pending[0].arrival_s <= now:
            spec = pending.pop(0)
            tokens = [hash((spec.request_id, i)) % 50_000 for i in range(spec.prompt_tokens)]
            scheduler.add_request(Request(spec.request_id, tokens, SamplingParams(max_tokens=spec.output_tokens,
                                                                                 ignore_eos=True)))
        out = scheduler.schedule()
        preemptions += [(now, request.request_id) for request in out.preempted]
        if out.is_empty:
            now = pending[0].arrival_s
            continue
        now += perf.step_time(shape_of(out))
        sampled = {item.request.request_id: 0 for item in out.scheduled if item.samples}
        for request_id in sampled:
            first_token.setdefault(request_id, now)
        for request in scheduler.update_from_output(out, sampled):
            end[request.request_id] = now
    return preemptions, first_token, end


@pytest.mark.parametrize("skip", [True, False])
def test_preemptions_match_direct_scheduler_stepping(skip):
    perf = LinearPerf(kv_tokens=KV_TOKENS)
    workload = synthetic_workload(60, 30, prompt_len="uniform:50:400", output_len="uniform:20:300", seed=11)
    expected, first_token, end = engine_like_run(workload, perf)
    replica, = make_replicas(1, perf, CONFIG, skip=skip)
    records = SimFleet([replica], make_policy("round_robin")).run(workload)
    assert len(expected) > 10
    assert [rid for _, rid in replica.preemptions] == [rid for _, rid in expected]
    assert [t for t, _ in replica.preemptions] == pytest.approx([t for t, _ in expected], rel=1e-12)
    for record in records:
        assert record.first_token_s == pytest.approx(first_token[record.request_id], rel=1e-12)
        assert record.end_s == pytest.approx(end[record.request_id], rel=1e-12)
