"""Speculative decoding side by side in one run: batch-1 decode speed on repetitive work (repeat or edit a
given text, code or JSON; chats that quote an earlier turn) and on open-ended questions, without speculation,
with each method, and llama.cpp (llama-cpp-python from `make peers`: the same GGUF file, threads and prompt
tokens, greedy), the engines alternating prompt by prompt.

    .venv/bin/python benchmarks/speculative_decoding.py [--prompts 12] [--passages 1] [--max-tokens 256] [--no-llamacpp]
        [--json PATH]

Speed is decode tokens per second: from each answer's first token to its last, summed over the prompts
(greedy answers end at the end of sequence or at --max-tokens, the same tokens for every engine).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.workload.repetitive import QUESTIONS, repetitive_messages

METHODS = {"ngram": {"method": "ngram", "num_speculative_tokens": 8, "prompt_lookup_min": 2,
                     "prompt_lookup_max": 4},
           "suffix": {"method": "suffix", "num_speculative_tokens": 16}}


def decode_span(times: list[float]) -> tuple[int, float]:
    return len(times) - 1, times[-1] - times[0]


def ours(llm: LLM, prompt: list[int], max_tokens: int) -> tuple[int, float]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    times: list[float] = []
    for output in llm.generate_stream(prompt, params):
        times.extend([time.perf_counter()] * len(output.new_token_ids))
    return decode_span(times)


def llamacpp(model, prompt: list[int], max_tokens: int) -> tuple[int, float]:
    times: list[float] = []
    for token in model.generate(prompt, temp=0.0, reset=True):
        if token == model.token_eos():
            break
        times.append(time.perf_counter())
        if len(times) == max_tokens:
            break
    return decode_span(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=12, help="prompts of each kind")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--passages", type=int, default=1, help="passages of text, code or JSON per repetitive task")
    parser.add_argument("--no-llamacpp", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    options = dict(kv_cache_memory="256MiB")
    engines = {"none": LLM(**options)}
    for name, config in METHODS.items():
        engines[name] = LLM(speculative_config=config, **options)
    base = engines["none"]
    peers = {}
    if not args.no_llamacpp:
        from llama_cpp import Llama

        from fleetserve.model.loader import default_gguf_path
        peers["llamacpp"] = Llama(model_path=str(default_gguf_path()), n_ctx=2048,
                                  n_threads=torch.get_num_threads(), n_batch=512, verbose=False)
    workloads = {"repetitive": [base.chat_prompt(repetitive_messages(i, args.passages)) for i in range(args.prompts)],
                 "open_ended": [base.chat_prompt([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
                                for i in range(args.prompts)]}
    for llm in engines.values():  # warm-up
        ours(llm, workloads["open_ended"][0], 8)
    result: dict = {"threads": torch.get_num_threads(), "max_tokens": args.max_tokens, "passages": args.passages,
                    "prompts": args.prompts, "methods": METHODS}
    for workload, prompts in workloads.items():
        totals = {name: [0, 0.0] for name in [*engines, *peers]}
        before = {name: llm.engine.speculation.stats.as_dict() for name, llm in engines.items()
                  if llm.engine.speculation is not None}
        for prompt in prompts:
            for name, llm in engines.items():
                tokens, seconds = ours(llm, prompt, args.max_tokens)
                totals[name][0] += tokens
                totals[name][1] += seconds
            for name, model in peers.items():
                tokens, seconds = llamacpp(model, prompt, args.max_tokens)
                totals[name][0] += tokens
                totals[name][1] += seconds
        speeds = {name: round(tokens / seconds, 1) for name, (tokens, seconds) in totals.items()}
        row: dict = {"decode_tok_s": speeds, "tokens": {name: t for name, (t, _) in totals.items()}}
        row["speedup_vs_none"] = {name: round(speeds[name] / speeds["none"], 2) for name in speeds if name != "none"}
        row["acceptance"] = {}
        for name, llm in engines.items():
            if llm.engine.speculation is None:
                continue
            stats, earlier = llm.engine.speculation.stats, before[name]
            drafts = stats.num_drafts - int(earlier["num_drafts"])
            drafted = stats.num_draft_tokens - int(earlier["num_draft_tokens"])
            accepted = stats.num_accepted_tokens - int(earlier["num_accepted_tokens"])
            row["acceptance"][name] = {
                "verifications": drafts, "draft_tokens": drafted, "accepted_tokens": accepted,
                "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
                "tokens_per_verification": round(1 + accepted / drafts, 2) if drafts else None}
        result[workload] = row
        print(workload, json.dumps(row), flush=True)
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
