"""`fleetserve generate`: apply the chat template, stream the answer to stdout."""
from __future__ import annotations

import argparse
import sys

from fleetserve.cli import engine_options
from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams


def run(args: argparse.Namespace) -> int:
    llm = LLM(**engine_options(args))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_tokens=args.max_tokens)
    prompt = args.prompt if args.no_chat else llm.chat_prompt([{"role": "user", "content": args.prompt}])
    for out in llm.generate_stream(prompt, params):
        sys.stdout.write(out.new_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
