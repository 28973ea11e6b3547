"""`fleetserve bench offline`: random prompts with ignore_eos and a fixed seed, through our engine and,
with --peer, through Hugging Face transformers' batched generate or llama-cpp-python on the same model."""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class OfflineRequest:
    prompt_token_ids: list[int]
    output_len: int


def parse_range(text: str, name: str) -> tuple[int, int]:
    try:
        low, _, high = text.partition(":")
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{name} must look like A:B (e.g. 64:512), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{name} needs 1 <= A <= B, got {text!r}")
    return lo, hi


def make_workload(num_requests: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int,
                  vocab_size: int) -> list[OfflineRequest]:
    rng = random.Random(seed)
    # Skip the low ids, where tokenizers keep their special tokens.
    low = min(1000, vocab_size // 4)
    return [OfflineRequest([rng.randrange(low, vocab_size) for _ in range(rng.randint(*input_len))],
                           rng.randint(*output_len)) for _ in range(num_requests)]


def summarize(workload: list[OfflineRequest], wall_s: float, output_tokens: int) -> dict:
    prompt_tokens = sum(len(r.prompt_token_ids) for r in workload)
    return {"wall_s": round(wall_s, 3), "output_tokens": output_tokens, "prompt_tokens": prompt_tokens,
            "output_tokens_per_s": round(output_tokens / wall_s, 2),
            "total_tokens_per_s": round((output_tokens + prompt_tokens) / wall_s, 2)}


def run_fleetserve(llm, workload: list[OfflineRequest]) -> dict:
    from fleetserve.engine.sampling_params import SamplingParams
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True) for r in workload]
    start = time.perf_counter()
    results = llm.generate([r.prompt_token_ids for r in workload], params)
    wall = time.perf_counter() - start
    return summarize(workload, wall, sum(len(r.token_ids) for r in results))


def run_hf(model_path: Path, dtype, workload: list[OfflineRequest], batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).eval()
    pad = model.config.eos_token_id if isinstance(model.config.eos_token_id, int) else 0
    model.generation_config.eos_token_id = None  # ignore_eos, as in our run
    start = time.perf_counter()
    produced = 0
    for i in range(0, len(workload), batch_size):
        batch = workload[i:i + batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        ids = torch.tensor([[pad] * (width - len(r.prompt_token_ids)) + r.prompt_token_ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.prompt_token_ids)) + [1] * len(r.prompt_token_ids) for r in batch])
        new = max(r.output_len for r in batch)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                           pad_token_id=pad)
        # A padded batch runs to its longest request; only the tokens each request asked for count.
        produced += sum(r.output_len for r in batch)
    return summarize(workload, time.perf_counter() - start, produced)


def run_llamacpp(gguf_path: Path, workload: list[OfflineRequest], threads: int) -> dict:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ValueError("the llamacpp peer needs llama-cpp-python: run `make peers` "
                         "(pip install 'llama-cpp-python[server]')") from None
    context = max(len(r.prompt_token_ids) + r.output_len for r in workload) + 8
    llm = Llama(model_path=str(gguf_path), n_ctx=context, n_threads=threads, n_batch=512, verbose=False)
    eos = llm.token_eos()
    start = time.perf_counter()
    produced = 0
    for r in workload:
        out = llm.create_completion(r.prompt_token_ids, max_tokens=r.output_len, temperature=0.0,
                                    logit_bias={eos: -1e9})
        produced += out["usage"]["completion_tokens"]
        llm.reset()
    return summarize(workload, time.perf_counter() - start, produced)


def run_offline(args: argparse.Namespace, engine_options: dict) -> int:
    """`fleetserve bench offline` with its parsed flags; `engine_options` are EngineConfig's arguments."""
    import torch

    from fleetserve.engine.llm import LLM
    from fleetserve.model.loader import default_gguf_path

    llm = LLM(**engine_options)
    engine = llm.engine
    workload = make_workload(args.num_requests, parse_range(args.input_len, "--input-len"),
                             parse_range(args.output_len, "--output-len"), args.seed,
                             engine.model_config.vocab_size)
    run_fleetserve(llm, workload[:2])  # warm-up: first-touch allocations and oneDNN kernel selection
    result = {"model": engine.model_name, "dtype": str(engine.dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "num_requests": args.num_requests,
              "input_len": args.input_len, "output_len": args.output_len, "seed": args.seed}
    speculation = engine.speculation
    if speculation is not None:  # the warm-up's drafts do not count
        speculation.stats = type(speculation.stats)()
    ours = run_fleetserve(llm, workload)
    result.update(ours)
    print(f"fleetserve: {ours['output_tokens_per_s']:.1f} output tok/s, {ours['total_tokens_per_s']:.1f} "
          f"total tok/s, {ours['wall_s']:.1f} s")
    if speculation is not None:
        result["speculative_config"] = speculation.config.to_dict()
        result["speculation"] = stats = speculation.stats.as_dict()
        print(f"speculation ({speculation.config.method}): {stats['num_draft_tokens']} drafted, "
              f"{stats['num_accepted_tokens']} accepted ({stats['acceptance_rate']:.0%}), "
              f"{stats['mean_accepted_per_draft']:.2f} accepted per verification")
    if args.peer:
        del llm, engine
        if args.peer == "hf":
            peer = run_hf(Path(LLMPath.of(args)), _dtype_of(result["dtype"]), workload, args.peer_batch_size)
            peer["name"] = f"transformers generate (batch {args.peer_batch_size})"
        else:
            gguf = Path(args.model) if args.model and args.model.endswith(".gguf") else default_gguf_path()
            peer = run_llamacpp(gguf, workload, torch.get_num_threads())
            peer["name"] = "llama-cpp-python (sequential)"
        result["peer"] = peer
        result["ratio"] = round(ours["output_tokens_per_s"] / peer["output_tokens_per_s"], 2)
        print(f"{peer['name']}: {peer['output_tokens_per_s']:.1f} output tok/s, "
              f"{peer['total_tokens_per_s']:.1f} total tok/s, {peer['wall_s']:.1f} s")
        print(f"ratio (fleetserve / peer, output tok/s): {result['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


class LLMPath:
    @staticmethod
    def of(args: argparse.Namespace) -> Path:
        from fleetserve.model.loader import resolve_model
        return resolve_model(args.model, args.cache_dir)


def _dtype_of(name: str):
    import torch
    return getattr(torch, name)
