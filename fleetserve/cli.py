"""One entry point: fleetserve generate | serve | route | bench | sim | profile."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str, target: str) -> Callable:
    """Register a sub-command; its module is imported only when the command runs, to keep start-up fast."""
    def wrap(add_arguments: Callable[[argparse.ArgumentParser], None]) -> Callable:
        COMMANDS[name] = (help_text, add_arguments, target)
        return add_arguments
    return wrap


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="GGUF file, Hugging Face folder or hub id (default: "
                        "the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", default=None, help="where converted models are cached "
                        "(default: $FLEETSERVE_CACHE or the user cache dir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--kv-cache-memory", default="1GiB", help="KV-cache budget, e.g. 512MiB or 2GiB")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto (the model dtype), bfloat16 or float32")
    parser.add_argument("--weight-format", default="auto", choices=["auto", "gguf", "dense"],
                        help="gguf: multiply straight from a GGUF model's quantized blocks (CPU, float32); dense: "
                        "dequantized weights in --dtype; auto: gguf where possible")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def engine_options(args: argparse.Namespace) -> dict:
    return dict(model=args.model, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype,
                kv_cache_memory=args.kv_cache_memory, kv_cache_dtype=args.kv_cache_dtype,
                weight_format=args.weight_format, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads)


@command("generate", "generate text for one prompt, streaming it", "fleetserve.commands.generate:run")
def _generate(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("prompt", nargs="?", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--no-chat", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    from fleetserve.commands import register_all
    register_all()
    parser = argparse.ArgumentParser(prog="fleetserve", description="LLM serving: engine, fleet, simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_text, add_arguments, target) in COMMANDS.items():
        group_name, _, leaf = name.partition(" ")
        where = sub
        if leaf:
            if group_name not in groups:
                group = sub.add_parser(group_name, help=f"{group_name} sub-commands")
                groups[group_name] = group.add_subparsers(dest="subcommand", required=True)
            where = groups[group_name]
        p = where.add_parser(leaf or name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_target=target)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = args._target.split(":")
    import importlib
    try:
        return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        name = " ".join(filter(None, [args.command, getattr(args, "subcommand", None)]))
        print(f"fleetserve {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Registrations land in the importable module, not in __main__, so delegate to it.
    from fleetserve.cli import main as registered_main
    sys.exit(registered_main())
