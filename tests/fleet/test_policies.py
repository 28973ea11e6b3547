"""Each routing policy's choice on constructed snapshots: pure functions, no processes."""
from __future__ import annotations

from collections import Counter

import pytest

from fleetserve.fleet.policies import (
    POLICY_NAMES,
    LeastLoaded,
    PolicyOptions,
    PrefixAware,
    RoundRobin,
    SessionAffinity,
    SLOGuard,
    TwoChoice,
    make_policy,
    ring_order,
)
from fleetserve.fleet.policy_basics import NoHealthyReplica
from fleetserve.fleet.snapshot import FleetSnapshot, ReplicaState, RouteRequest


def replica(name: str, **fields) -> ReplicaState:
    return ReplicaState(replica_id=name, **fields)


def request(request_id: str = "r", prompt_tokens: int = 1000, **fields) -> RouteRequest:
    return RouteRequest(request_id=request_id, prompt_tokens=prompt_tokens, max_tokens=fields.pop("max_tokens", 100),
                        **fields)


def fleet(*replicas: ReplicaState) -> FleetSnapshot:
    return FleetSnapshot(tuple(replicas))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_refuses_a_fleet_without_healthy_replicas(name):
    policy = make_policy(name)
    with pytest.raises(NoHealthyReplica, match=r"\['a', 'b'\]"):
        policy.choose(request(session_key="s"), fleet(replica("a", healthy=False), replica("b", healthy=False)))


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_skips_unhealthy_replicas(name):
    snapshot = fleet(replica("a", healthy=False), replica("b"), replica("c", healthy=False))
    policy = make_policy(name)
    assert {policy.choose(request(f"r{i}", session_key=f"s{i}"), snapshot) for i in range(20)} == {"b"}


def test_make_policy_names_the_known_policies():
    with pytest.raises(ValueError, match=r"'nope'.*round_robin"):
        make_policy("nope")


def test_round_robin_cycles_in_snapshot_order():
    policy = RoundRobin()
    snapshot = fleet(replica("a"), replica("b"), replica("c"))
    assert [policy.choose(request(), snapshot) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_least_loaded_counts_outstanding_tokens_not_requests():
    snapshot = fleet(replica("busy", in_flight=1, waiting_prefill_tokens=5000),
                     replica("many", in_flight=4, decoding_tokens=400))
    assert LeastLoaded().choose(request(), snapshot) == "many"


def test_least_loaded_divides_work_by_weight():
    snapshot = fleet(replica("small", decoding_tokens=300), replica("big", decoding_tokens=500, weight=2.0))
    assert LeastLoaded().choose(request(), snapshot) == "big"


def test_ties_spread_over_replicas_and_are_deterministic():
    snapshot = fleet(replica("a"), replica("b"), replica("c"))
    choices = [LeastLoaded().choose(request(f"r{i}"), snapshot) for i in range(300)]
    assert min(Counter(choices).values()) > 60
    assert choices == [LeastLoaded().choose(request(f"r{i}"), snapshot) for i in range(300)]


def test_session_sticks_to_one_replica_and_moves_only_when_it_leaves():
    policy = SessionAffinity(virtual_nodes=64)
    full = fleet(replica("a"), replica("b"), replica("c"), replica("d"))
    before = {f"user-{i}": policy.choose(request(session_key=f"user-{i}"), full) for i in range(400)}
    assert len(set(before.values())) == 4
    # Load within the bound does not move a session.
    loaded = fleet(replica("a", decoding_tokens=300), replica("b", decoding_tokens=200), replica("c"), replica("d"))
    assert all(policy.choose(request(session_key=k), loaded) == v for k, v in before.items())
    # Only the sessions of a replica that leaves move.
    without_b = fleet(replica("a"), replica("b", healthy=False), replica("c"), replica("d"))
    after = {k: policy.choose(request(session_key=k), without_b) for k in before}
    moved = {k for k in before if before[k] != after[k]}
    assert moved == {k for k, v in before.items() if v == "b"}


def test_session_ring_spreads_keys_evenly():
    counts = Counter(ring_order(f"user-{i}", ("a", "b", "c", "d"), 64)[0] for i in range(4000))
    assert all(700 < n < 1300 for n in counts.values()), counts
    assert all(sorted(ring_order(f"user-{i}", ("a", "b", "c", "d"), 64)) == list("abcd") for i in range(50))


def test_session_overflow_walks_the_ring_past_replicas_over_the_load_bound():
    policy = SessionAffinity(virtual_nodes=64, load_epsilon=0.25)
    key = "user-7"
    first, second, *_ = ring_order(key, tuple("abcd"), 64)
    req = request(session_key=key, prompt_tokens=100, max_tokens=100)

    def snapshot(first_work: int, second_work: int = 0) -> FleetSnapshot:
        work = {first: first_work, second: second_work}
        return fleet(*(replica(n, decoding_tokens=work.get(n, 1000)) for n in "abcd"))

    # The bound: 1.25 times the mean work with the request's 200 tokens counted.
    assert policy.choose(req, snapshot(1000)) == first  # 1000 <= 1.25 * (1000 + 2000 + 200) / 4
    assert policy.choose(req, snapshot(6000)) == second  # 6000 > 1.25 * (6000 + 2000 + 200) / 4
    assert policy.choose(req, snapshot(6000, 6000)) not in (first, second)
    # Without the bound the session never moves.
    assert SessionAffinity(load_epsilon=None).choose(req, snapshot(10**6)) == first


def test_session_without_a_key_falls_back_to_least_loaded():
    snapshot = fleet(replica("a", decoding_tokens=900), replica("b", decoding_tokens=100))
    assert SessionAffinity().choose(request(session_key=None), snapshot) == "b"


def test_prefix_prefers_the_replica_holding_the_prompt():
    snapshot = fleet(replica("cold"), replica("warm", cached_prefix_tokens=960, decoding_tokens=200))
    # cold: 1000 uncached + 0 queued; warm: 40 uncached + 200 queued
    assert PrefixAware().choose(request(prompt_tokens=1000), snapshot) == "warm"


def test_prefix_score_trades_cache_against_queued_work_in_tokens():
    snapshot = fleet(replica("cold"), replica("warm", cached_prefix_tokens=960, waiting_prefill_tokens=1500))
    # cold: 1000; warm: 40 + 1500
    assert PrefixAware().choose(request(prompt_tokens=1000), snapshot) == "cold"


def test_prefix_imbalance_guard_spills_only_beyond_both_bounds():
    hot = replica("hot", cached_prefix_tokens=9000, waiting_prefill_tokens=3000)
    snapshot = fleet(hot, replica("idle-1", decoding_tokens=100), replica("idle-2", cached_prefix_tokens=2000,
                                                                        decoding_tokens=200))
    big = request(prompt_tokens=10000)
    # Off by default, and within the bound: the cached replica wins (1000 + 3000 < 8200 + 200) ...
    assert PrefixAware().choose(big, snapshot) == "hot"
    assert PrefixAware(max_imbalance_tokens=4096).choose(big, snapshot) == "hot"
    # ... beyond both bounds the request spills to the cheapest replica within them.
    assert PrefixAware(max_imbalance_tokens=1000).choose(big, snapshot) == "idle-2"
    # 3000 tokens of work is over 1000 above the lightest (100) but not 40 times it: no spill.
    assert PrefixAware(max_imbalance_tokens=1000, max_imbalance_ratio=40).choose(big, snapshot) == "hot"


def test_prefix_slo_guard_moves_a_request_only_to_rescue_its_ttft():
    def snapshot(queued: int) -> FleetSnapshot:
        return fleet(replica("warm", cached_prefix_tokens=3000, waiting_prefill_tokens=queued,
                             prefill_tokens_per_s=4000.0),
                     replica("other", decoding_tokens=2000, prefill_tokens_per_s=4000.0))
    req = request(prompt_tokens=4000, ttft_slo_ms=1500)
    # warm: (2000 + 1000) / 4000 = 750 ms, within the SLO; cost 3000 < other's 4000 + 2000.
    assert PrefixAware().choose(req, snapshot(2000)) == "warm"
    # warm: (3500 + 1000) / 4000 = 1125 ms, still within: stays though other would also make it.
    assert PrefixAware().choose(req, snapshot(3500)) == "warm"
    # With a tighter SLO warm misses (1125 ms > 1100) and other meets it (1000 ms): moved.
    assert PrefixAware().choose(request(prompt_tokens=4000, ttft_slo_ms=1100), snapshot(3500)) == "other"
    # Both miss 900 ms: stays with the cache.
    assert PrefixAware().choose(request(prompt_tokens=4000, ttft_slo_ms=900), snapshot(3500)) == "warm"


def test_two_choice_candidates_depend_only_on_the_key_prefix_and_are_distinct():
    policy = TwoChoice(key_blocks=1, hot_key_factor=0)  # a fixed key: the first block
    replicas = [replica(n) for n in "abcdefgh"]
    shared = [policy.candidates(request(f"r{i}", block_hashes=(42, i)), replicas) for i in range(20)]
    assert all([c.replica_id for c in pair] == [c.replica_id for c in shared[0]] for pair in shared)
    assert shared[0][0].replica_id != shared[0][1].replica_id
    # Different prefixes spread over the fleet.
    firsts = Counter(policy.candidates(request(block_hashes=(h,)), replicas)[0].replica_id for h in range(800))
    assert len(firsts) == 8 and min(firsts.values()) > 50


def session_turns(policy: TwoChoice, replicas: list[ReplicaState], sessions: int, turns: int
                  ) -> dict[int, set[tuple[str, ...]]]:
    """Interleaved sessions whose prompts all open with the same header block (42), then the session's
    own first message (1000 + session), then later turns; returns each session's candidate pairs."""
    pairs: dict[int, set[tuple[str, ...]]] = {session: set() for session in range(sessions)}
    for turn in range(turns):
        for session in range(sessions):
            hashes = (42, 1000 + session, *range(10_000 * session, 10_000 * session + 2 * turn))
            pair = policy.candidates(request(f"s{session}t{turn}", block_hashes=hashes), replicas)
            if turn > 0:  # the first turns teach the policy that block 42 is in every prompt
                pairs[session].add(tuple(sorted(c.replica_id for c in pair)))
    return pairs


def test_two_choice_keys_past_a_prefix_every_request_shares():
    replicas = [replica(n) for n in "abcdefgh"]
    adaptive = session_turns(TwoChoice(), replicas, sessions=40, turns=6)
    # Each session keeps one pair of candidates over its turns, and sessions spread over the fleet.
    assert all(len(pairs) == 1 for pairs in adaptive.values())
    assert len({name for pairs in adaptive.values() for pair in pairs for name in pair}) == 8
    # Keyed on the shared header alone, every session gets the same two candidates.
    fixed = session_turns(TwoChoice(hot_key_factor=0), replicas, sessions=40, turns=6)
    assert len({pair for pairs in fixed.values() for pair in pairs}) == 1


def test_two_choice_keeps_a_prefix_with_a_fair_share_on_its_two_candidates():
    policy = TwoChoice()
    replicas = [replica(n) for n in "abcdefgh"]
    pairs: dict[int, set[tuple[str, ...]]] = {group: set() for group in range(16)}
    for i in range(800):  # 16 system prompts, each 1/16 of the traffic: under one replica's share (1/8)
        group = i % 16
        pair = policy.candidates(request(f"r{i}", block_hashes=(group, 100 + i)), replicas)
        pairs[group].add(tuple(sorted(c.replica_id for c in pair)))
    assert all(len(group_pairs) == 1 for group_pairs in pairs.values())


def test_two_choice_picks_the_cheaper_candidate():
    policy = TwoChoice(hot_key_factor=0)
    names = "abcd"
    req = request(block_hashes=(7, 8))
    first, second = (c.replica_id for c in policy.candidates(req, [replica(n) for n in names]))
    snapshot = fleet(*(replica(n, decoding_tokens=5000 if n == first else 0,
                               cached_prefix_tokens=500 if n == second else 0) for n in names))
    assert policy.choose(req, snapshot) == second
    snapshot = fleet(*(replica(n, cached_prefix_tokens=900 if n == first else 0) for n in names))
    assert policy.choose(req, snapshot) == first


def test_two_choice_falls_back_to_least_loaded_when_the_ttft_slo_is_at_risk():
    names = "abcd"
    req = request(prompt_tokens=1000, block_hashes=(11,), ttft_slo_ms=500)
    pair = {c.replica_id for c in TwoChoice().candidates(req, [replica(n) for n in names])}
    others = {n for n in names if n not in pair}

    def snapshot(queued: int) -> FleetSnapshot:
        return fleet(*(replica(n, waiting_prefill_tokens=queued if n in pair else 0,
                               decoding_tokens=0 if n in pair else 50, prefill_tokens_per_s=4000.0)
                       for n in names))

    # (0 + 1000) / 4000 tok/s = 250 ms: within the SLO, stays with the candidates.
    assert TwoChoice().choose(req, snapshot(0)) in pair
    # (2000 + 1000) / 4000 = 750 ms > 500 ms: the least loaded replica instead.
    assert TwoChoice().choose(req, snapshot(2000)) in others
    # The router default applies when the request sets no SLO; no speed known means no guard.
    no_slo = request(prompt_tokens=1000, block_hashes=(11,))
    assert TwoChoice(slo_guard=SLOGuard(default_ttft_slo_ms=500)).choose(no_slo, snapshot(2000)) in others
    assert TwoChoice().choose(no_slo, snapshot(2000)) in pair


def test_two_choice_without_a_full_block_spreads_by_request_id():
    snapshot = fleet(*(replica(n) for n in "abcd"))
    chosen = Counter(TwoChoice().choose(request(f"r{i}", prompt_tokens=5), snapshot) for i in range(400))
    assert len(chosen) == 4


def test_policy_options_reach_the_policies():
    options = PolicyOptions(virtual_nodes=8, max_imbalance_tokens=7, key_blocks=2, default_ttft_slo_ms=300.0,
                            default_prefill_tokens_per_s=1234.0, hot_key_factor=0.5)
    assert make_policy("session", options).virtual_nodes == 8
    assert make_policy("prefix", options).max_imbalance_tokens == 7
    two = make_policy("two_choice", options)
    assert (two.key_blocks, two.hot_key_factor) == (2, 0.5)
    assert two.slo_guard == SLOGuard(300.0, 1234.0) == make_policy("prefix", options).slo_guard


def test_two_choice_stays_with_its_cached_candidate_when_moving_would_not_rescue_the_slo():
    names = "abcd"
    req = request(prompt_tokens=4000, block_hashes=(5,), ttft_slo_ms=500)
    pair = [c.replica_id for c in TwoChoice().candidates(req, [replica(n) for n in names])]
    # The candidates hold 3000 of the 4000 tokens but are queued: (1000 + 1000) / 2000 tok/s = 1 s.
    # The idle replicas would need 4000 / 2000 = 2 s: the SLO is lost either way, so keep the cache.
    snapshot = fleet(*(replica(n, waiting_prefill_tokens=1000 if n in pair else 0,
                               cached_prefix_tokens=3000 if n in pair else 0, prefill_tokens_per_s=2000.0)
                       for n in names))
    assert TwoChoice().choose(req, snapshot) in pair


def test_slo_guard_credits_a_replica_that_served_nothing_yet_with_the_others_learnt_speed():
    guard = SLOGuard(default_ttft_slo_ms=1000)
    busy = replica("busy", waiting_prefill_tokens=8000, prefill_tokens_per_s=4000.0)
    idle = replica("idle", weight=2.0)  # no speed learnt yet; twice busy's capacity
    req = request(prompt_tokens=2000)
    assert guard.prefill_speed(idle, [busy, idle]) == 8000.0
    # busy: (8000 + 2000) / 4000 = 2.5 s; idle: 2000 / 8000 = 0.25 s.
    assert guard.apply(req, busy, [busy, idle]) is idle
    # With no speed learnt anywhere and none configured there is nothing to estimate: no move.
    unknown = replica("busy", waiting_prefill_tokens=8000)
    assert guard.apply(req, unknown, [unknown, idle]) is unknown
    assert SLOGuard(1000, default_prefill_tokens_per_s=4000.0).apply(req, unknown, [unknown, idle]) is idle
