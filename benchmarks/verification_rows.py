"""What a verified row costs: the time of one decode step of a lone request with k drafts set by hand
(k + 1 decode rows), for k from 0 to 15; medians of 5 steps, three rounds, median of the rounds.

    .venv/bin/python benchmarks/verification_rows.py
"""
from __future__ import annotations

import statistics
import time

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams


def main() -> None:
    llm = LLM(kv_cache_memory="256MiB")
    engine = llm.engine
    prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    request_id = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True))
    while not engine.scheduler.requests[request_id].output_token_ids:
        engine.step()
    request = engine.scheduler.requests[request_id]
    rounds: dict[int, list[float]] = {}
    for _ in range(3):
        for drafts in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 15):
            times = []
            for _ in range(5):
                request.spec_token_ids = [5] * drafts
                start = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - start)
            rounds.setdefault(drafts + 1, []).append(statistics.median(times) * 1e3)
    for rows, values in rounds.items():
        print(f"{rows} rows: {statistics.median(values):.1f} ms")


if __name__ == "__main__":
    main()
