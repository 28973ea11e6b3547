"""Batch-1 decode speed: fleetserve against a peer in one run: transformers (same weights and dtype) or
llama.cpp (llama-cpp-python from `make peers`, the same GGUF file, the same thread count).

    .venv/bin/python benchmarks/engine_batch1.py [--peer hf|llamacpp] [--tokens 128] [--rounds 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
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


def llamacpp_decode(gguf_path: str, prompt: list[int], tokens: int, threads: int) -> float:
    """Greedy decode speed of llama.cpp from its first token to its last (end of sequence never stops it)."""
    from llama_cpp import Llama
    llm = Llama(model_path=gguf_path, n_ctx=len(prompt) + tokens + 8, n_threads=threads, n_batch=512,
                verbose=False)

    def token_times(count: int) -> list[float]:
        times: list[float] = []
        for _ in llm.generate(prompt, temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == count:
                break
        return times

    token_times(8)
    times = token_times(tokens)
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer", choices=["hf", "llamacpp"], default="hf")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the engines this many times; medians")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    llm = LLM()
    prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    ours(llm, prompt, 8)
    if args.peer == "hf":
        peer = "transformers_tok_s"

        def peer_speed() -> float:
            return transformers_decode(str(llm.engine.model_path), llm.engine.dtype, prompt, args.tokens)
    else:
        from fleetserve.model.loader import default_gguf_path
        peer = "llamacpp_tok_s"

        def peer_speed() -> float:
            return llamacpp_decode(str(default_gguf_path()), prompt, args.tokens, torch.get_num_threads())
    # The VM's speed drifts over minutes: alternating the two keeps each pair of runs side by side.
    rounds = [(ours(llm, prompt, args.tokens), peer_speed()) for _ in range(args.rounds)]
    result = {"threads": torch.get_num_threads(), "dtype": str(llm.engine.dtype),
              "kv_cache_dtype": str(llm.engine.kv_cache_dtype), "tokens": args.tokens,
              "rounds": [[round(a, 1), round(b, 1)] for a, b in rounds],
              "fleetserve_tok_s": round(statistics.median(a for a, _ in rounds), 1),
              peer: round(statistics.median(b for _, b in rounds), 1)}
    result["ratio"] = round(result["fleetserve_tok_s"] / result[peer], 2)
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
