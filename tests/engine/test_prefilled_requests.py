"""A request whose prompt another replica prefilled (disaggregated prefill), in the scheduler and KV manager
the live engine and the simulator share: its blocks are taken at once, the prefix cache is shared and fed, and
it is scheduled for decodes only."""
from __future__ import annotations

from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.scheduler import Scheduler, SchedulerConfig
from fleetserve.wire.block_hashes import chain_block_hashes

from scheduler_ops import make_request, run_to_end


def prefilled(rid: str, prompt: list[int], max_tokens: int = 4, first_token: int = 7):
    request = make_request(rid, prompt, max_tokens)
    request.output_token_ids.append(first_token)
    return request


def scheduler_with(num_blocks: int, block_size: int = 4, budget: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(max_num_batched_tokens=budget), KVCacheManager(num_blocks, block_size))


def test_a_prefilled_request_holds_its_prompt_blocks_and_only_decodes():
    scheduler = scheduler_with(16)
    request = prefilled("r", list(range(10)))
    assert scheduler.add_prefilled_request(request, 10) == 0
    assert len(scheduler.kv_cache.block_table("r")) == 3
    out = scheduler.schedule()
    assert [(s.request.request_id, s.start, s.num_tokens) for s in out.scheduled] == [("r", 10, 1)]
    run_to_end(scheduler)
    assert request.num_output_tokens == 4
    assert scheduler.kv_cache.num_free_blocks == 16


def test_imported_full_blocks_enter_the_prefix_cache_and_a_held_prefix_is_shared():
    scheduler = scheduler_with(16)
    kv = scheduler.kv_cache
    prompt = list(range(12))
    scheduler.add_prefilled_request(prefilled("a", prompt), 12)
    assert kv.cached_prefix_length(chain_block_hashes(prompt, 4)) == 3
    # A second import of a prompt that shares two blocks finds them held: only the rest needs writing.
    second = prompt[:8] + [50, 51, 52]
    assert scheduler.add_prefilled_request(prefilled("b", second), 11) == 8
    assert kv.block_table("b")[:2] == kv.block_table("a")[:2]
    run_to_end(scheduler)
    assert kv.num_free_blocks == 16


def test_no_room_leaves_a_request_that_computes_its_prompt_here():
    scheduler = scheduler_with(4)
    busy = make_request("busy", list(range(12)), max_tokens=4)
    scheduler.add_request(busy)
    scheduler.update_from_output(scheduler.schedule(), {"busy": 1})  # busy holds 3 of the 4 blocks
    request = prefilled("r", list(range(100, 110)), max_tokens=2)
    assert scheduler.add_prefilled_request(request, 10) is None
    assert request.num_computed_tokens == 0 and scheduler.kv_cache.block_table("r") == []
    run_to_end(scheduler)
    assert request.num_output_tokens == 2 and busy.num_output_tokens == 4
    assert scheduler.kv_cache.num_free_blocks == 4


def test_a_preempted_prefilled_request_recomputes_prompt_and_first_token():
    scheduler = scheduler_with(5, budget=64)
    request = prefilled("r", list(range(8)), max_tokens=6)
    scheduler.add_prefilled_request(request, 8)
    scheduler.update_from_output(scheduler.schedule(), {"r": 1})
    scheduler._preempt(scheduler.running.pop())
    assert request.num_computed_tokens == 0
    out = scheduler.schedule()
    assert [(s.start, s.num_tokens) for s in out.scheduled] == [(8, 2)]  # its prompt blocks were cached
    run_to_end(scheduler)
    assert request.num_output_tokens == 6


def test_aborting_a_waiting_prefilled_request_frees_its_blocks():
    from fleetserve.engine.request import RequestStatus
    scheduler = scheduler_with(8)
    scheduler.add_prefilled_request(prefilled("r", list(range(10))), 10)
    assert scheduler.kv_cache.num_free_blocks == 5
    scheduler.finish_requests(["r"], RequestStatus.FINISHED_ABORTED)
    assert scheduler.kv_cache.num_free_blocks == 8 and not scheduler.has_unfinished()


def test_waiting_imports_give_their_blocks_to_the_first_in_line_when_nothing_runs():
    """Imports take blocks on arrival; here they hold all but two of eight while the first waiting request
    needs four, and nothing runs that could free any."""
    scheduler = scheduler_with(8)
    first = make_request("first", list(range(500, 512)), max_tokens=4)
    scheduler.add_request(first)
    imports = [prefilled(f"i{n}", list(range(100 * n, 100 * n + 12)), max_tokens=2) for n in (1, 2)]
    for request in imports:
        assert scheduler.add_prefilled_request(request, 12) == 0
    out = scheduler.schedule()
    assert out.scheduled[0].request is first
    assert scheduler.imports.num_dropped == 1 and imports[1].num_computed_tokens == 0
    run_to_end(scheduler)
    assert [r.num_output_tokens for r in (first, *imports)] == [4, 2, 2]
    assert scheduler.kv_cache.num_free_blocks == 8
