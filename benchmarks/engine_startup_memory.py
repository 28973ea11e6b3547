"""First load (with GGUF conversion), warm start to the first token, and peak memory with 32 sequences
of 1,024 tokens. Each measurement runs in a fresh process so caches and allocations do not carry over.

    .venv/bin/python benchmarks/engine_startup_memory.py [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

FIRST_TOKEN = """
import time; start = time.perf_counter()
from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
llm = LLM()
loaded = time.perf_counter() - start
prompt = llm.chat_prompt([{"role": "user", "content": "Hello!"}])
next(iter(llm.generate_stream(prompt, SamplingParams(temperature=0, max_tokens=4))))
print(loaded, time.perf_counter() - start)
"""

PEAK_MEMORY = """
import resource, random
from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
llm = LLM(kv_cache_memory=32 * 1024 * 2 * 30 * 3 * 64 * 2, max_num_seqs=32)
rng = random.Random(0)
prompts = [[rng.randrange(1000, 49000) for _ in range(512)] for _ in range(32)]
results = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=512, ignore_eos=True))
assert all(len(r.prompt_token_ids) + len(r.token_ids) == 1024 for r in results)
assert llm.engine.scheduler.num_preemptions == 0, llm.engine.scheduler.num_preemptions
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, llm.engine.kv_cache.num_blocks)
"""


def run(code: str, env_cache: str | None = None) -> list[float]:
    import os
    env = dict(os.environ)
    if env_cache:
        env["FLEETSERVE_CACHE"] = env_cache
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cold:
        cold_load, cold_first = run(FIRST_TOKEN, cold)
        warm_load, warm_first = run(FIRST_TOKEN, cold)
    peak_mib, blocks = run(PEAK_MEMORY)
    result = {"first_load_with_conversion_s": round(cold_load, 2), "first_start_to_first_token_s": round(cold_first, 2),
              "warm_load_s": round(warm_load, 2), "warm_start_to_first_token_s": round(warm_first, 2),
              "peak_rss_mib_32x1024": round(peak_mib), "kv_blocks": int(blocks)}
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
