"""Throughput through HTTP against the offline engine, and against llama-cpp-python's OpenAI server, on
the same random workload, in one run.

    .venv/bin/python benchmarks/server_throughput.py [--requests 64] [--json PATH] [--skip-llamacpp]

1. offline: LLM.generate on the workload with max_num_seqs = the client concurrency (32);
2. fleetserve serve: 32 concurrent streaming clients (closed loop) on /v1/completions;
3. fleetserve serve vs `python -m llama_cpp.server` on the same GGUF, 16 concurrent clients each.
Prompts are token ids, outputs use ignore_eos (llama.cpp: a -inf logit bias on EOS) so every request
produces exactly the tokens it asks for.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx

from fleetserve.bench.offline import make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, path: str, timeout_s: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


async def load(url: str, model: str, workload, concurrency: int, extra: dict) -> dict:
    queue = list(enumerate(workload))
    produced = 0
    failures = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal produced, failures
        while queue:
            _, request = queue.pop(0)
            body = {"model": model, "prompt": request.prompt_text, "max_tokens": request.output_len,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
            tokens = 0
            async with client.stream("POST", url + "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    failures += 1
                    await response.aread()
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        chunk = json.loads(line[6:])
                        if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                            tokens += 1
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
            produced += tokens

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"wall_s": round(wall, 2), "output_tokens": produced, "failures": failures,
            "output_tokens_per_s": round(produced / wall, 2)}


def fleetserve_server(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fleetserve.commands.serve", "--port", str(port),
                             "--no-access-log", "--log-level", "warning"], cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--input-len", default="32:256")
    parser.add_argument("--output-len", default="32:128")
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-llamacpp", action="store_true")
    args = parser.parse_args()
    from fleetserve.bench.offline import parse_range
    workload = make_workload(args.requests, parse_range(args.input_len, "input"),
                             parse_range(args.output_len, "output"), 0, 49152)
    from fleetserve.model.loader import resolve_model
    from fleetserve.model.tokenizer import Tokenizer
    tokenizer = Tokenizer(resolve_model(None))
    for request in workload:
        # Text, not ids: llama-cpp-python's server takes only strings; both servers get the same text.
        request.prompt_text = tokenizer.decode(request.prompt_token_ids)
        request.prompt_token_ids = tokenizer.encode(request.prompt_text)
    result: dict = {"requests": args.requests, "input_len": args.input_len, "output_len": args.output_len}

    from fleetserve.bench.offline import run_fleetserve
    from fleetserve.engine.llm import LLM
    llm = LLM(max_num_seqs=32)
    run_fleetserve(llm, workload[:2])
    result["offline_32"] = run_fleetserve(llm, workload)
    del llm

    port = free_port()
    server = fleetserve_server(port)
    url = f"http://127.0.0.1:{port}"
    try:
        result["fleetserve_start_to_health_s"] = round(wait_ready(url, server, "/health"), 2)
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        asyncio.run(load(url, model, workload[:4], 4, {"ignore_eos": True}))
        result["http_32"] = asyncio.run(load(url, model, workload, 32, {"ignore_eos": True}))
        result["http_over_offline"] = round(result["http_32"]["output_tokens_per_s"]
                                            / result["offline_32"]["output_tokens_per_s"], 3)
        if not args.skip_llamacpp:
            result["fleetserve_16"] = asyncio.run(load(url, model, workload[:32], 16, {"ignore_eos": True}))
    finally:
        server.terminate()
        server.wait(60)
    print(json.dumps(result, indent=2), flush=True)

    if not args.skip_llamacpp:
        from fleetserve.model.loader import default_gguf_path
        port = free_port()
        peer = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf_path()),
                                 "--n_ctx", "4096", "--n_threads", str(os.cpu_count()), "--port", str(port),
                                 # by default a new request cancels the one streaming; queue them instead
                                 "--interrupt_requests", "False"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, peer, "/v1/models")
            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            eos_bias = {"logit_bias": {"2": -100.0}}
            asyncio.run(load(url, model, workload[:2], 2, eos_bias))
            result["llamacpp_16"] = asyncio.run(load(url, model, workload[:32], 16, eos_bias))
            result["fleetserve_over_llamacpp_16"] = round(result["fleetserve_16"]["output_tokens_per_s"]
                                                          / result["llamacpp_16"]["output_tokens_per_s"], 2)
        finally:
            peer.terminate()
            peer.wait(60)
    print(json.dumps(result, indent=2))
    if args.json:
        open(args.json, "w").write(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
