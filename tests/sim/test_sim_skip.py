"""Decode skipping gives the same per-request results as stepping one token at a time."""
import dataclasses

import pytest

from fleetserve.fleet.policies import make_policy
from fleetserve.perf.hardware import CATALOG
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.config import ReplicaConfig
from fleetserve.sim.fleet import SimFleet
from fleetserve.workload.spec import RequestSpec, Workload
from fleetserve.workload.synthetic import synthetic_workload

from sim_helpers import LinearPerf, make_replicas


def simulate(workload, skip: bool, replicas: int = 1, perf=None, config=None, policy="round_robin"):
    fleet = SimFleet(make_replicas(replicas, perf, config, skip), make_policy(policy))
    records = fleet.run(workload)
    return records, fleet.replicas


def assert_same(a, b):
    records_a, replicas_a = a
    records_b, replicas_b = b
    for x, y in zip(records_a, records_b, strict=True):
        assert (x.request_id, x.success, x.error_kind, x.output_tokens) == (y.request_id, y.success, y.error_kind,
                                                                         y.output_tokens)
        assert x.first_token_s == pytest.approx(y.first_token_s, rel=1e-12, abs=1e-12)
        assert x.end_s == pytest.approx(y.end_s, rel=1e-12, abs=1e-12)
        assert x.token_times_s == pytest.approx(y.token_times_s, rel=1e-12, abs=1e-12)
    for p, q in zip(replicas_a, replicas_b, strict=True):
        assert [rid for _, rid in p.preemptions] == [rid for _, rid in q.preemptions]
        assert (p.num_steps, p.kv.prefix_cache_hits, p.kv.prefix_cache_queries) == (
            q.num_steps, q.kv.prefix_cache_hits, q.kv.prefix_cache_queries)


CASES = {
    "plain": (dict(num_requests=120, rate=20, prompt_len="uniform:8:700", output_len="uniform:1:120"), None, None),
    "shared_prefixes": (dict(num_requests=120, rate=30, prompt_len="uniform:8:300", output_len="uniform:1:80",
                             shared_prefix_groups=3, shared_prefix_tokens=200), None, None),
    "sessions": (dict(num_requests=None, sessions=20, turns_per_session=4, think_time_s=0.5, rate=5,
                      prompt_len="uniform:8:100", output_len="uniform:4:60"), None, None),
    "tight_kv_preempts": (dict(num_requests=80, rate=50, prompt_len="uniform:100:400", output_len="uniform:50:300"),
                          LinearPerf(kv_tokens=3000), None),
    # shared prefixes on a cache too small for the load: prefix hits (shared and re-admitted) and preemptions
    "shared_prefixes_preempts": (dict(num_requests=100, rate=60, prompt_len="uniform:64:400",
                                      output_len="uniform:20:250", shared_prefix_groups=3,
                                      shared_prefix_tokens=160), LinearPerf(kv_tokens=2500), None),
    # few sequence slots, so requests wait while the running ones prefill in many chunks and get preempted
    "chunked_prefill_preempts": (dict(num_requests=60, rate=40, prompt_len="uniform:100:600",
                                      output_len="uniform:10:300"), LinearPerf(kv_tokens=2000),
                                 ReplicaConfig(max_num_seqs=3, max_num_batched_tokens=64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_skipping_matches_stepping_token_by_token(case):
    kwargs, perf, config = CASES[case]
    workload = synthetic_workload(seed=3 if config is None else 7, **kwargs)
    replicas = 2 if config is None else 1
    stepped = simulate(workload, skip=False, replicas=replicas, perf=perf, config=config)
    skipped = simulate(workload, skip=True, replicas=replicas, perf=perf, config=config)
    assert_same(stepped, skipped)
    assert sum(replica.num_segments for replica in skipped[1]) > 0
    full_steps = sum(replica.num_full_steps for replica in skipped[1])
    assert full_steps < sum(replica.num_full_steps for replica in stepped[1])
    if "preempts" in case:
        assert sum(len(replica.preemptions) for replica in skipped[1]) > 0
    if "prefixes" in case:
        assert sum(replica.kv.prefix_cache_hits for replica in skipped[1]) > 0


def test_skipping_matches_with_the_roofline_model_and_a_small_token_budget(llama3_8b):
    perf = RooflineModel(llama3_8b, CATALOG["l4"])
    workload = synthetic_workload(100, 8, prompt_len="uniform:8:900", output_len="uniform:1:200", seed=5)
    config = ReplicaConfig(max_num_seqs=8, max_num_batched_tokens=96)
    assert_same(simulate(workload, False, perf=perf, config=config), simulate(workload, True, perf=perf,
                                                                               config=config))


def test_a_run_is_deterministic():
    workload = synthetic_workload(150, 40, prompt_len="uniform:8:500", output_len="uniform:1:100", seed=9,
                                  shared_prefix_groups=2, shared_prefix_tokens=64)
    first = simulate(workload, True, replicas=3, policy="least_loaded")[0]
    second = simulate(workload, True, replicas=3, policy="least_loaded")[0]
    assert [dataclasses.asdict(r) for r in first] == [dataclasses.asdict(r) for r in second]


def test_admitting_a_request_opens_a_segment_instead_of_a_full_step():
    # Each arrival finds the replica idle or only decoding, so the step that admits it begins a segment (its
    # first prompt chunk is the segment's trailing prefill), with the same results as stepping.
    workload = Workload([RequestSpec(f"r{i}", 0.05 * i, 300, 40) for i in range(6)], "staggered", "test")
    stepped = simulate(workload, skip=False)
    skipped = simulate(workload, skip=True)
    assert_same(stepped, skipped)
    assert stepped[1][0].num_full_steps == stepped[1][0].num_steps
    assert skipped[1][0].num_full_steps == 0
    assert skipped[1][0].num_segments >= 6
