"""The one-call decode layers against the per-operation torch path, in one process and one run: batch-1
decode speed and the offline workload (64 requests, prompts 64-512, outputs 64-256), each path in turn,
without prefix caching (the runs share their prompts).

    .venv/bin/python benchmarks/fused_decode.py [--num-requests 64] [--tokens 128] [--json PATH]

Both paths multiply from the same GGUF blocks with the same C block kernels; the difference is only the
Python and torch dispatch around them.
"""
from __future__ import annotations

import argparse
import json

import torch

from fleetserve.bench.offline import make_workload, run_fleetserve
from fleetserve.engine.llm import LLM

from engine_batch1 import ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    llm = LLM(enable_prefix_caching=False)  # every run computes every prompt: the same workload runs twice
    model = llm.engine.model
    fused = model.fused_decode
    if fused is None:
        raise SystemExit("the one-call decode is not available here (no C compiler, or not GGUF blocks)")
    prompt = llm.chat_prompt([{"role": "user", "content": "Write a long story about a lighthouse keeper."}])
    workload = make_workload(args.num_requests, (64, 512), (64, 256), 0, llm.engine.model_config.vocab_size)
    run_fleetserve(llm, workload[:2])
    result: dict = {"threads": torch.get_num_threads(), "num_requests": args.num_requests}
    for name, path in (("one_call", fused), ("per_operation", None), ("one_call_again", fused)):
        model.fused_decode = path
        ours(llm, prompt, 8)
        result[name] = {"batch1_decode_tok_s": round(ours(llm, prompt, args.tokens), 1)}
        if name != "one_call_again":
            result[name]["offline"] = run_fleetserve(llm, workload)
        print(name, json.dumps(result[name]), flush=True)
    model.fused_decode = fused
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
