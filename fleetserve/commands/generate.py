"""`fleetserve generate`: apply the chat template, stream the answer to stdout."""
from __future__ import annotations

import argparse
import sys

from fleetserve.commands.engine_arguments import add_engine_arguments, engine_options
from fleetserve.engine.sampling_params import SamplingParams


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_arguments(p)
    p.add_argument("prompt", nargs="?", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--no-chat", action="store_true", help="send the prompt as is, without the chat template")
    # A command-line answer is greedy and longer than the API's defaults, unless asked otherwise.
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=SamplingParams.top_p)
    p.add_argument("--top-k", type=int, default=SamplingParams.top_k)
    p.add_argument("--seed", type=int, default=SamplingParams.seed)


def run(args: argparse.Namespace) -> int:
    from fleetserve.engine.llm import LLM

    llm = LLM(**engine_options(args))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_tokens=args.max_tokens)
    prompt = args.prompt if args.no_chat else llm.chat_prompt([{"role": "user", "content": args.prompt}])
    for out in llm.generate_stream(prompt, params):
        sys.stdout.write(out.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
