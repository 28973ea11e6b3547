"""The engine's command-line flags, shared by `generate`, `serve`, `bench offline` and `profile`; every
default is EngineConfig's own."""
from __future__ import annotations

import argparse

from fleetserve.commands.argument_types import positive
from fleetserve.commands.scheduling_arguments import add_scheduling_arguments, scheduling_policy
from fleetserve.engine.config import EngineConfig
from fleetserve.speculative.config import SpeculativeConfig


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=EngineConfig.model, help="GGUF file, Hugging Face folder or hub id "
                        "(default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", default=EngineConfig.cache_dir, help="where converted models are cached "
                        "(default: $FLEETSERVE_CACHE or the user cache dir)")
    parser.add_argument("--device", default=EngineConfig.device)
    parser.add_argument("--dtype", default=EngineConfig.dtype, help="auto, bfloat16, float16 or float32")
    parser.add_argument("--kv-cache-memory", default=EngineConfig.kv_cache_memory,
                        help="KV-cache budget, e.g. 512MiB or 2GiB")
    parser.add_argument("--kv-cache-dtype", default=EngineConfig.kv_cache_dtype,
                        help="auto (the model dtype), bfloat16 or float32")
    parser.add_argument("--weight-format", default=EngineConfig.weight_format, choices=["auto", "gguf", "dense"],
                        help="gguf: multiply straight from a GGUF model's quantized blocks (CPU, float32); dense: "
                        "dequantized weights in --dtype; auto: gguf where possible")
    parser.add_argument("--block-size", type=int, default=EngineConfig.block_size)
    parser.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens)
    parser.add_argument("--max-step-ms", type=positive(float), default=EngineConfig.max_step_ms,
                        help="bound each step's predicted time (ms): decodes keep their pace and prompts go in "
                        "smaller chunks; the step cost is the engine's own fit of the steps it has run "
                        "(default: no bound)")
    parser.add_argument("--max-model-len", type=int, default=EngineConfig.max_model_len)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--threads", type=thread_count, default=EngineConfig.num_threads,
                        help="CPU threads: auto (default) runs one per core that other processes leave free, "
                        "re-read every second between steps; a number fixes the count")
    parser.add_argument("--speculative-config", type=speculative_config, default=EngineConfig.speculative_config,
                        help='model-free speculative decoding, as vLLM takes it: JSON such as \'{"method": "ngram", '
                        '"num_speculative_tokens": 4}\' or \'{"method": "suffix"}\' (default: none)')
    add_scheduling_arguments(parser)


def speculative_config(text: str) -> str:
    """`--speculative-config`: checked here so that a bad one stops the command at once; passed on as text."""
    try:
        SpeculativeConfig.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def thread_count(text: str) -> int | None:
    """`--threads`: 'auto' (None) or a whole number of at least one."""
    if text.strip().lower() == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number of threads >= 1, got {text!r}")
    return count


def engine_options(args: argparse.Namespace) -> dict:
    """EngineConfig's keyword arguments from the flags of add_engine_arguments."""
    return dict(model=args.model, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype,
                kv_cache_memory=args.kv_cache_memory, kv_cache_dtype=args.kv_cache_dtype,
                weight_format=args.weight_format, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, max_step_ms=args.max_step_ms,
                max_model_len=args.max_model_len,
                enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
                scheduling=scheduling_policy(args), speculative_config=args.speculative_config)
