"""The scheduling policy on the engine's own Scheduler: priority order and victim choice against a reference
ordering, preemption for a higher-priority arrival, the online/offline classes, and runs of decode steps that
still match stepping token by token when priorities and classes are in play."""
from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.engine.scheduling_policy import SchedulingPolicy

from run_checks import assert_run_matches_stepping
from scheduler_ops import apply_operation, run_to_end


def request(rid: str, prompt_len: int = 8, max_tokens: int = 4, priority: int = 0, offline: bool = False,
            arrival: float = 0.0) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, priority=priority,
                            service_class="offline" if offline else "online")
    start = 1000 + 600 * (zlib.crc32(rid.encode()) % 40)  # distinct prompts: no prefix hits between requests
    return Request(rid, list(range(start, start + prompt_len)), params, arrival_time=arrival)


def scheduler(policy: str = "priority", num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
              budget: int = 64, **policy_options) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=512,
                             policy=SchedulingPolicy(policy, **policy_options))
    return Scheduler(config, KVCacheManager(num_blocks, block_size))


def step(sched: Scheduler) -> list[str]:
    """One step; returns the ids scheduled in it."""
    out = sched.schedule()
    sched.update_from_output(out, {s.request.request_id: 7 for s in out.scheduled if s.samples})
    return [s.request.request_id for s in out.scheduled]


entries = st.lists(st.tuples(st.integers(-3, 3), st.floats(0, 100, allow_nan=False), st.booleans()), max_size=30)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(entries, st.sampled_from([0.0, 5.0, 30.0]), st.sampled_from(["fcfs", "priority"]))
def test_the_waiting_queue_follows_the_reference_order(items, aging, policy):
    sched = scheduler(policy, priority_aging_s=aging)
    for index, (priority, arrival, offline) in enumerate(items):
        sched.add_request(request(f"r{index}", priority=priority, arrival=arrival, offline=offline))

    def reference(index: int) -> tuple:
        priority, arrival, offline = items[index]
        if policy == "fcfs":
            return (offline, index)
        effective = priority + arrival / aging if aging else priority
        return (offline, effective, arrival, index)

    assert [r.request_id for r in sched.waiting] == [f"r{i}" for i in sorted(range(len(items)), key=reference)]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(entries.filter(bool), st.sampled_from(["fcfs", "priority"]))
def test_the_victim_is_the_reference_one(items, policy):
    sched = scheduler(policy, num_blocks=512, max_num_seqs=64, budget=4096)
    for index, (priority, arrival, offline) in enumerate(items):
        sched.add_request(request(f"r{index}", priority=priority, arrival=arrival, offline=offline))
    step(sched)
    running = sched.running
    assert len(running) == len(items)
    assert all(not r.offline for r in running[:sum(not r.offline for r in running)]), "online before offline"
    offline_present = any(r.offline for r in running)
    candidates = [(i, r) for i, r in enumerate(running) if r.offline == offline_present]
    if policy == "fcfs":
        expected = candidates[-1][1]
    else:
        expected = max(candidates, key=lambda item: (item[1].priority, item[1].arrival_time, item[0]))[1]
    assert running[sched.victim_index()] is expected


def test_a_high_priority_arrival_starts_first_and_preempts_the_lowest_priority_one():
    # Two sequences at a time: both taken by priority-0 requests, two more priority-0 ones wait.
    sched = scheduler(max_num_seqs=2)
    for index in range(4):
        sched.add_request(request(f"low{index}", priority=0, arrival=index, max_tokens=50))
    step(sched)
    assert [r.request_id for r in sched.running] == ["low0", "low1"]
    sched.add_request(request("urgent", priority=-1, arrival=10, max_tokens=5))
    assert [r.request_id for r in sched.waiting] == ["urgent", "low2", "low3"]
    scheduled = step(sched)
    assert "urgent" in scheduled and "low2" not in scheduled and "low3" not in scheduled
    # The victim was the running request with the largest (priority, arrival): low1.
    assert [r.request_id for r in sched.running] == ["low0", "urgent"]
    assert sched.requests["low1"].status is RequestStatus.PREEMPTED and sched.requests["low1"].num_computed_tokens == 0
    assert [r.request_id for r in sched.waiting] == ["low1", "low2", "low3"]


def test_when_blocks_run_out_the_lowest_priority_running_request_is_preempted():
    # 12 blocks of 4 tokens; three requests of 8 prompt tokens grow until the blocks run out.
    sched = scheduler(num_blocks=12, max_num_seqs=8)
    sched.add_request(request("mid", priority=1, arrival=0, max_tokens=40))
    sched.add_request(request("low", priority=5, arrival=1, max_tokens=40))
    sched.add_request(request("high", priority=-2, arrival=2, max_tokens=40))
    preempted: list[str] = []
    for _ in range(40):
        out = sched.schedule()
        preempted += [r.request_id for r in out.preempted]
        sched.update_from_output(out, {s.request.request_id: 7 for s in out.scheduled if s.samples})
        if preempted:
            break
    assert preempted[0] == "low"


def test_fcfs_ignores_priorities():
    sched = scheduler("fcfs", max_num_seqs=1)
    sched.add_request(request("first", priority=9, arrival=0))
    sched.add_request(request("second", priority=-9, arrival=1))
    assert step(sched) == ["first"]


def test_aging_lets_a_long_waiting_low_priority_request_ahead():
    sched = scheduler(max_num_seqs=1, priority_aging_s=10.0)
    sched.add_request(request("old-low", priority=2, arrival=0.0))
    sched.add_request(request("new-high", priority=0, arrival=30.0))  # 30 s later: the old one gained 3 levels
    assert step(sched) == ["old-low"]
    no_aging = scheduler(max_num_seqs=1, priority_aging_s=0.0)
    no_aging.add_request(request("old-low", priority=2, arrival=0.0))
    no_aging.add_request(request("new-high", priority=0, arrival=30.0))
    assert step(no_aging) == ["new-high"]


def test_online_requests_are_admitted_before_waiting_offline_ones_and_preempt_them_for_a_slot():
    sched = scheduler("fcfs", max_num_seqs=2)
    for index in range(3):
        sched.add_request(request(f"batch{index}", offline=True, arrival=index, max_tokens=50))
    step(sched)
    assert [r.request_id for r in sched.running] == ["batch0", "batch1"]
    sched.add_request(request("chat", arrival=10, max_tokens=5))
    scheduled = step(sched)
    assert scheduled[0] == "chat"
    assert [r.request_id for r in sched.running] == ["chat", "batch0"]
    assert [r.request_id for r in sched.waiting] == ["batch1", "batch2"]


def test_offline_work_uses_the_whole_budget_alone_and_its_share_beside_online_work():
    sched = scheduler("fcfs", num_blocks=256, budget=64, offline_token_share=0.5)
    sched.add_request(request("batch", prompt_len=200, offline=True))
    out = sched.schedule()
    assert out.num_batched_tokens == 64  # alone: all of it
    sched.update_from_output(out, {})
    sched.add_request(request("chat", prompt_len=10))
    out = sched.schedule()
    tokens = {s.request.request_id: s.num_tokens for s in out.scheduled}
    assert tokens == {"chat": 10, "batch": 32 - 10}  # half the budget, less the online tokens


def test_offline_requests_leave_the_online_reserve_free():
    sched = scheduler("fcfs", num_blocks=20, block_size=4, budget=256, online_kv_reserve=0.25)
    for index in range(4):
        sched.add_request(request(f"batch{index}", prompt_len=16, offline=True, max_tokens=30))
    for _ in range(30):
        step(sched)
        assert sched.kv_cache.num_free_blocks >= 5
    run_to_end(sched)
    assert not sched.has_unfinished()


def test_an_online_request_that_needs_blocks_preempts_offline_work_first():
    sched = scheduler("fcfs", num_blocks=10, block_size=4, budget=256, online_kv_reserve=0.0)
    sched.add_request(request("chat", prompt_len=8, max_tokens=24, arrival=0))
    sched.add_request(request("batch", prompt_len=8, max_tokens=24, offline=True, arrival=1))
    preempted: list[str] = []
    while sched.has_unfinished():
        out = sched.schedule()
        preempted += [r.request_id for r in out.preempted]
        sched.update_from_output(out, {s.request.request_id: 7 for s in out.scheduled if s.samples})
    assert preempted and set(preempted) == {"batch"}


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "step", "step", "step", "abort"]), st.integers(0, 10_000)),
               max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ops, st.integers(6, 48), st.sampled_from([1, 2, 4]), st.integers(2, 40), st.sampled_from(["fcfs", "priority"]),
       st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([0.0, 0.2]), st.integers(0, 1000))
def test_runs_match_stepping_with_priorities_and_classes(operations, num_blocks, block_size, budget, policy, share,
                                                         reserve, cut):
    config = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=96,
                             policy=SchedulingPolicy(policy, 3.0, share, reserve))
    sched = Scheduler(config, KVCacheManager(num_blocks, block_size, record_events=True))
    live: list[str] = []

    def prompt_for(index: int, value: int) -> list[int]:
        return list(range(1 + value % (num_blocks * block_size // 2)))

    def make(request_id: str, prompt: list[int], max_tokens: int, value: int) -> Request:
        return request(request_id, len(prompt), max_tokens, priority=value % 3 - 1, offline=value % 4 == 0,
                       arrival=float(request_id[1:]))

    for index, (op, value) in enumerate(operations):
        apply_operation(sched, op, value, index, prompt_for, live, longest_output=40, make=make)
    sched.kv_cache.take_events()
    for attempt in range(3):
        assert_run_matches_stepping(sched, cut + attempt)


def test_bad_policy_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="scheduling policy must be one of fcfs, priority"):
        SchedulingPolicy("lifo")
    with pytest.raises(ValueError, match="offline_token_share"):
        SchedulingPolicy(offline_token_share=1.5)
    with pytest.raises(ValueError, match="priority must be an integer"):
        SamplingParams(priority="high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service_class must be one of online, offline"):
        SamplingParams(service_class="batch")


def test_an_urgent_arrival_does_not_preempt_a_request_that_aging_would_readmit_first():
    sched = scheduler(max_num_seqs=1, priority_aging_s=10.0)
    sched.add_request(request("old", priority=0, arrival=0.0, max_tokens=50))
    step(sched)
    # 30 s later an urgent request: by aging the old one (three levels gained) still comes first.
    sched.add_request(request("urgent", priority=-1, arrival=30.0))
    out = sched.schedule()
    assert not out.preempted and [s.request.request_id for s in out.scheduled] == ["old"]
