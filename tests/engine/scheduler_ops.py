"""Requests and random scheduler operations shared by the KV-cache property tests."""
from __future__ import annotations

from typing import Callable

from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.engine.scheduler import Scheduler


def make_request(rid: str, prompt: list[int], max_tokens: int = 4) -> Request:
    return Request(rid, prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))


def run_to_end(scheduler: Scheduler, token: int = 7, max_steps: int = 10_000) -> int:
    steps = 0
    while scheduler.has_unfinished() and steps < max_steps:
        out = scheduler.schedule()
        sampled = {s.request.request_id: token for s in out.scheduled if s.samples}
        scheduler.update_from_output(out, sampled)
        steps += 1
    return steps


def apply_operation(scheduler: Scheduler, op: str, value: int, index: int,
                    prompt_for: Callable[[int, int], list[int]], live: list[str], longest_output: int = 6,
                    make: Callable[[str, list[int], int, int], Request] | None = None) -> None:
    """One operation of a random run: "add" request q{index} with prompt_for(index, value) and at most
    `longest_output` tokens (a request the scheduler refuses is left out), "step" the scheduler, or "abort"
    one of the `live` requests. `make(request_id, prompt, max_tokens, value)` builds the added request
    (default: make_request)."""
    if op == "add":
        max_tokens = 1 + value % longest_output
        prompt = prompt_for(index, value)
        request = (make(f"q{index}", prompt, max_tokens, value) if make is not None
                   else make_request(f"q{index}", prompt, max_tokens=max_tokens))
        try:
            scheduler.add_request(request)
            live.append(request.request_id)
        except ValueError:
            pass
    elif op == "step":
        out = scheduler.schedule()
        scheduler.update_from_output(out, {s.request.request_id: value % 50 for s in out.scheduled if s.samples})
    elif op == "abort" and live:
        scheduler.finish_requests([live[value % len(live)]], RequestStatus.FINISHED_ABORTED)
