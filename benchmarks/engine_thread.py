"""Step time by which thread builds the engine and which steps it: the measurement behind the server's rule
that the thread that loads the model also runs its step loop (fleetserve/engine/async_engine.py).

    .venv/bin/python benchmarks/engine_thread.py [--json PATH]

Three fresh processes, each timing the same requests (prompts of 64, 325 and 512 random tokens, 4 output
tokens each, one at a time): built and stepped on the main thread; built on the main thread and stepped
on another (what the server did before); built and stepped on one non-main thread (what it does now).
Reports per case the first step (the prefill) and the median decode step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = ("main", "built-on-main-stepped-on-thread", "built-and-stepped-on-thread")
PROMPTS = (64, 325, 512)


def measure(case: str) -> dict:
    import random
    import threading
    import time

    from fleetserve.engine.config import EngineConfig
    from fleetserve.engine.engine import LLMEngine
    from fleetserve.engine.sampling_params import SamplingParams

    holder: dict = {}
    results: dict = {"prefill_ms": {}, "decode_ms": []}

    def build() -> None:
        holder["engine"] = LLMEngine(EngineConfig())

    def run() -> None:
        engine, rng = holder["engine"], random.Random(1)
        for rep in range(2):  # the first pass warms up; the second is reported
            for length in PROMPTS:
                engine.add_request([rng.randrange(100, 40000) for _ in range(length)],
                                   SamplingParams(max_tokens=4, ignore_eos=True))
                steps = []
                while engine.has_unfinished_requests():
                    started = time.perf_counter()
                    engine.step()
                    steps.append((time.perf_counter() - started) * 1e3)
                if rep:
                    results["prefill_ms"][length] = round(steps[0], 1)
                    results["decode_ms"] += steps[1:]

    if case == "main":
        build()
        run()
    elif case == "built-on-main-stepped-on-thread":
        build()
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    else:
        worker = threading.Thread(target=lambda: (build(), run()))
        worker.start()
        worker.join()
    results["decode_ms"] = round(statistics.median(results["decode_ms"]), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case)))
        return
    report = {}
    for case in CASES:
        child = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True,
                               check=True)
        report[case] = json.loads(child.stdout.strip().splitlines()[-1])
        print(case, report[case], flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
