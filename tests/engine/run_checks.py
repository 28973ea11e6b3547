"""Checks that a run of decode steps leaves the scheduler as stepping token by token would, shared by the
decode-run and scheduling-policy tests."""
from __future__ import annotations

import copy

from fleetserve.engine.decode_run_start import apply_decode_run, begin_decode_run
from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.scheduler import Scheduler

PLACEHOLDER = 0  # the token a decode run appends; stepping samples the same, so block hashes agree


def step(scheduler: Scheduler) -> list[Request]:
    out = scheduler.schedule()
    return scheduler.update_from_output(out, {s.request.request_id: PLACEHOLDER for s in out.scheduled if s.samples})


def state(scheduler: Scheduler, requests: dict[str, Request]) -> dict:
    kv = scheduler.kv_cache
    hashes = {rid: list(request.block_hashes) for rid, request in requests.items()}
    return {
        "requests": {rid: (r.status, r.num_computed_tokens, list(r.output_token_ids),
                           [kv.blocks[block_id].block_hash for block_id in kv.block_table(rid)])
                     for rid, r in requests.items()},
        "running": [r.request_id for r in scheduler.running],
        "waiting": [r.request_id for r in scheduler.waiting],
        "free": [block.block_hash for block in kv.free_blocks_in_eviction_order()],
        "cached_prefix": {rid: kv.cached_prefix_length(chain) for rid, chain in hashes.items()},
        "prefix_counters": (kv.prefix_cache_queries, kv.prefix_cache_hits),
        "published": published(kv),
        "preemptions": scheduler.num_preemptions,
    }


def published(kv: KVCacheManager) -> dict[int, bool]:
    """What the KV-event feed told a subscriber since the last call: for each block hash it named, whether
    that hash is now cached (its last event stored it) or not (removed). The tests never clear the cache."""
    net: dict[int, bool] = {}
    for event in kv.take_events():
        assert event.kind != "cleared"
        for block_hash in event.block_hashes:
            net[block_hash] = event.kind == "stored"
    return net


def assert_run_matches_stepping(scheduler: Scheduler, cut: int) -> bool:
    """Plan a run on `scheduler` and apply its first steps (`cut` picks how many); step a copy as many times
    token by token; both end in the same state. False when no run was planned (then one `schedule` step on
    each must agree: a begun admission step is the one `schedule` would begin)."""
    stepped = copy.deepcopy(scheduler)
    requests = dict(scheduler.requests)
    stepped_requests = dict(stepped.requests)
    run = begin_decode_run(scheduler)
    if run is None:
        assert [r.request_id for r in step(scheduler)] == [r.request_id for r in step(stepped)]
        assert state(scheduler, requests) == state(stepped, stepped_requests)
        return False
    steps = 1 + cut % run.steps
    finished = apply_decode_run(scheduler, run, steps)
    finished_stepping: list[Request] = []
    for _ in range(steps):
        finished_stepping += step(stepped)
    assert [r.request_id for r in finished] == [r.request_id for r in finished_stepping]
    assert state(scheduler, requests) == state(stepped, stepped_requests)
    if steps == run.steps and finished:
        assert all(r.status is RequestStatus.FINISHED_LENGTH for r in finished)
    return True
