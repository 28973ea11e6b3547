"""The adaptive draft length against fixed ones, side by side: batch-1 decode speed of n-gram speculation on
repetitive prompts (two passages each), adaptive, always 7 and always 3 drafts, against no speculation, the
engines alternating prompt by prompt.

    .venv/bin/python benchmarks/draft_lengths.py [--prompts 6]
"""
from __future__ import annotations

import argparse

from fleetserve.engine.llm import LLM
from fleetserve.workload.repetitive import repetitive_messages

from speculative_decoding import ours

NGRAM = {"method": "ngram", "num_speculative_tokens": 7, "prompt_lookup_min": 2, "prompt_lookup_max": 4}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=6)
    args = parser.parse_args()
    engines = {"none": LLM(kv_cache_memory="256MiB"),
               "adaptive": LLM(kv_cache_memory="256MiB", speculative_config=NGRAM),
               "fixed7": LLM(kv_cache_memory="256MiB", speculative_config={**NGRAM, "adaptive": False}),
               "fixed3": LLM(kv_cache_memory="256MiB",
                             speculative_config={**NGRAM, "num_speculative_tokens": 3, "adaptive": False})}
    prompts = [engines["none"].chat_prompt(repetitive_messages(i, 2)) for i in range(args.prompts)]
    for llm in engines.values():  # warm-up
        ours(llm, prompts[0], 8)
    totals = {name: [0, 0.0] for name in engines}
    for prompt in prompts:
        for name, llm in engines.items():
            tokens, seconds = ours(llm, prompt, 256)
            totals[name][0] += tokens
            totals[name][1] += seconds
    speed = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    print({name: round(value, 1) for name, value in speed.items()})
    print({name: round(value / speed["none"], 2) for name, value in speed.items()})


if __name__ == "__main__":
    main()
