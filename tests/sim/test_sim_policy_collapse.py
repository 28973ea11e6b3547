"""two_choice on long multi-turn sessions whose prompts all open alike (as a chat template makes them).

Keyed on the first block alone, every session shares that block and so the same two candidates: half of
this fleet takes every request while the other half idles, and goodput falls far below least_loaded's.
The adaptive key (DualMap's) keys past the shared header, on each session's own first message.
"""
from __future__ import annotations

from collections import Counter

import pytest

from fleetserve.bench.metrics import SLO, summarize
from fleetserve.fleet.policies import LeastLoaded, Policy, TwoChoice
from fleetserve.model.config import ModelConfig
from fleetserve.perf.hardware import parse_fleet_spec
from fleetserve.perf.roofline import RooflineModel
from fleetserve.sim.config import ReplicaConfig, SimOptions
from fleetserve.sim.simulate import simulate
from fleetserve.workload.synthetic import synthetic_workload

pytestmark = pytest.mark.slow

LLAMA_3_8B_32K = ModelConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=128, intermediate_size=14336, vocab_size=128256,
                             max_position_embeddings=32768)


def goodput_and_replicas_used(policy: Policy) -> tuple[float, int]:
    # 200 sessions of 6 turns, 5 s apart, every prompt opening with the same 64-token header.
    workload = synthetic_workload(None, rate=30.0, sessions=200, turns_per_session=6, prompt_len="lognormal:1500:0.5",
                                  output_len="fixed:100", think_time_s=5.0, shared_prefix_groups=1,
                                  shared_prefix_tokens=64, seed=0)
    fleet = parse_fleet_spec("h100:4")
    perf = {"h100": RooflineModel(LLAMA_3_8B_32K, fleet[0][0])}
    run = simulate(workload, fleet, perf, policy, LLAMA_3_8B_32K.max_position_embeddings, ReplicaConfig(),
                   SimOptions(record_token_times=False))
    summary = summarize(run.records, None, SLO(ttft_ms=1000, tpot_ms=100))
    routed = Counter(replica.replica_id for replica in run.replicas if replica.kv.prefix_cache_queries > 0)
    return summary["goodput"], len(routed)


def test_two_choice_keyed_on_a_shared_header_collapses_and_the_adaptive_key_does_not():
    least_loaded, spread = goodput_and_replicas_used(LeastLoaded())
    fixed_key, fixed_spread = goodput_and_replicas_used(TwoChoice(hot_key_factor=0))
    adaptive, adaptive_spread = goodput_and_replicas_used(TwoChoice())
    assert spread == adaptive_spread == 4
    assert fixed_spread == 2
    assert fixed_key < 0.5 * least_loaded
    assert adaptive >= least_loaded
