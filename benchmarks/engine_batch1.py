"""Batch-1 decode speed: fleetserve against transformers, same weights and dtype, in one run.

    .venv/bin/python benchmarks/engine_batch1.py [--tokens 128] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams


def ours(llm: LLM, prompt: list[int], tokens: int) -> float:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    times = [time.perf_counter() for _ in llm.generate_stream(prompt, params)]
    return (len(times) - 1) / (times[-1] - times[0])  # decode only: from the first token to the last


def transformers_decode(model_path: str, dtype: torch.dtype, prompt: list[int], tokens: int) -> float:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])

    def timed(new: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    timed(2)
    one = min(timed(1) for _ in range(2))
    return (tokens - 1) / (timed(tokens) - one)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    llm = LLM()
    prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    ours(llm, prompt, 8)
    result = {"threads": torch.get_num_threads(), "dtype": str(llm.engine.dtype),
              "kv_cache_dtype": str(llm.engine.kv_cache_dtype), "tokens": args.tokens,
              "fleetserve_tok_s": round(ours(llm, prompt, args.tokens), 1)}
    result["transformers_tok_s"] = round(transformers_decode(str(llm.engine.model_path), llm.engine.dtype, prompt,
                                                             args.tokens), 1)
    result["ratio"] = round(result["fleetserve_tok_s"] / result["transformers_tok_s"], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
