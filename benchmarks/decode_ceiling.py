"""The bandwidth-bound ceiling of batch-1 decode on this machine, and the engine's decode speed as a share of it.

A decode step of one sequence must read every weight once (the GGUF file's tensor bytes: llama.cpp reads
exactly these) and the sequence's KV cache; at the machine's memory bandwidth that bounds the tokens per
second. The bandwidth is measured with torch on --threads threads: a read (sum over a buffer far larger than
the caches) and a copy (read plus write).

    .venv/bin/python benchmarks/decode_ceiling.py [--threads 2] [--buffer-mib 1024] [--tokens 128] [--llamacpp]
        [--json PATH]

--llamacpp also measures llama.cpp (llama-cpp-python from `make peers`) on the same file and threads.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fleetserve.engine.llm import LLM
from fleetserve.model.loader import default_gguf_path

from engine_batch1 import llamacpp_decode, ours


def best_seconds(work, repeats: int) -> float:
    work()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def bandwidth_gb_s(buffer_mib: int, repeats: int = 7) -> dict[str, float]:
    source = torch.ones(buffer_mib * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    nbytes = source.numel() * 4
    read = nbytes / best_seconds(lambda: source.sum(), repeats) / 1e9
    copy = 2 * nbytes / best_seconds(lambda: target.copy_(source), repeats) / 1e9
    return {"read_gb_s": round(read, 1), "copy_gb_s": round(copy, 1)}


def weight_bytes() -> int:
    from gguf import GGUFReader
    return sum(int(tensor.n_bytes) for tensor in GGUFReader(str(default_gguf_path())).tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--buffer-mib", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--llamacpp", action="store_true", help="also llama.cpp's decode speed and share")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    memory = bandwidth_gb_s(args.buffer_mib)
    llm = LLM(num_threads=args.threads)
    config = llm.engine.model_config
    prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    # KV read per step at the run's mean context, in the engine's KV dtype.
    kv_per_token = config.kv_bytes_per_token(llm.engine.kv_cache_dtype.itemsize)
    mean_context = len(prompt) + args.tokens / 2
    weights = weight_bytes()
    step_bytes = weights + kv_per_token * mean_context
    ceiling = memory["read_gb_s"] * 1e9 / step_bytes
    ours(llm, prompt, 8)
    engine = ours(llm, prompt, args.tokens)
    result = {"threads": args.threads, **memory, "weight_bytes": weights, "kv_bytes_per_token": kv_per_token,
              "prompt_tokens": len(prompt), "decode_tokens": args.tokens, "step_bytes": round(step_bytes),
              "ceiling_tok_s": round(ceiling, 1), "fleetserve_tok_s": round(engine, 1),
              "fleetserve_share_of_ceiling": round(engine / ceiling, 3)}
    if args.llamacpp:
        peer = llamacpp_decode(str(default_gguf_path()), prompt, args.tokens, args.threads)
        result.update(llamacpp_tok_s=round(peer, 1), llamacpp_share_of_ceiling=round(peer / ceiling, 3))
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
