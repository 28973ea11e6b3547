"""Block kernels against dequantized fp32 weights through torch's BLAS matmul: every weight matrix of the
default model's 30 layers, for a range of input rows (one decode step's worth of work per row).

    .venv/bin/python benchmarks/quantized_matmul.py [--rows 1,4,16,32,64,128,256] [--threads 2] [--json PATH]

The crossover sets fleetserve.model.quantized.DENSE_FROM_ROWS.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from fleetserve.engine.llm import LLM
from fleetserve.model.gguf_blocks import read_blocks
from fleetserve.model.loader import TensorSource


def best_of(function, repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,4,16,32,64,96,128,256")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(weight_format="gguf", kv_cache_memory="16MiB")
    matmul = llm.engine.model.quantized_matmul
    matmul.library.set_threads(args.threads)
    blocks = {name: w for name, w in read_blocks(llm.engine.model_path).items() if ".layers." in name}
    source = TensorSource(llm.engine.model_path)
    dense = {name: source[name].t().contiguous() for name in blocks}
    results = []
    for rows in (int(value) for value in args.rows.split(",")):
        inputs = {name: torch.randn(rows, w.in_features) for name, w in blocks.items()}

        def run_blocks(allow_dense: bool = False) -> None:
            for name, weight in blocks.items():
                matmul(inputs[name], weight, allow_dense=allow_dense)

        def run_dequantized_blas() -> None:
            for name, weight in blocks.items():
                saved, matmul.dense_from_rows = matmul.dense_from_rows, 0
                matmul(inputs[name], weight)
                matmul.dense_from_rows = saved

        def run_fp32() -> None:
            for name in blocks:
                inputs[name] @ dense[name]

        row = {"rows": rows, "blocks_ms": best_of(run_blocks) * 1e3,
               "dequantize_then_blas_ms": best_of(run_dequantized_blas) * 1e3, "fp32_blas_ms": best_of(run_fp32) * 1e3}
        results.append({key: round(value, 2) for key, value in row.items()})
        print(results[-1], flush=True)
    if args.json:
        open(args.json, "w").write(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
