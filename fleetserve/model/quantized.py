"""Matrix products with GGUF weight blocks on the CPU (kernels in fleetserve/kernels/quantized_matmul_cpu.c).

Few rows (decode steps, the logits of sampled tokens) multiply straight from the blocks, so a step reads
the weights at 4.5-8.5 bits each instead of 32; many rows (prefill chunks) dequantize the matrix into a
reused buffer and take the BLAS matmul, whose blocking wins once the weights are reused enough."""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from fleetserve.model.gguf_blocks import QuantizedWeight

DENSE_FROM_ROWS = 192  # benchmarks/quantized_matmul.py on a 2-core Zen 3: below this the block kernel wins


class QuantizedMatmul:
    def __init__(self, library: ctypes.CDLL, dense_from_rows: int = DENSE_FROM_ROWS) -> None:
        self.library = library
        self.dense_from_rows = dense_from_rows
        self._scratch = torch.empty(0)

    def __call__(self, x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None,
                 allow_dense: bool = True) -> torch.Tensor:
        """x: [rows, in_features] -> [rows, out_features], fp32."""
        x = x.contiguous()
        rows, n, k = x.shape[0], weight.out_features, weight.in_features
        if allow_dense and rows >= self.dense_from_rows:
            if self._scratch.numel() < n * k:
                self._scratch = torch.empty(n * k)
            dense = self._scratch[:n * k].view(n, k)
            self._check(self.library.dequantize_rows(weight.kind, weight.blocks.data_ptr(), k, None, n,
                                                     dense.data_ptr()), weight)
            return F.linear(x, dense, bias)
        out = torch.empty(rows, n)
        if rows:
            self._check(self.library.quantized_matmul(weight.kind, x.data_ptr(), rows, k, weight.blocks.data_ptr(),
                                                      n, None if bias is None else bias.data_ptr(),
                                                      out.data_ptr()), weight)
        return out

    def same_kernel_rows(self, rows: int) -> int:
        """The most rows a product can have and still take the kernel that `rows` rows take: a row's
        arithmetic differs between kernels (not within one), so a step that keeps its kernel keeps every
        row's result bit for bit."""
        fused = self.library.fused_max_rows()
        if rows <= fused:
            return fused
        return self.dense_from_rows - 1 if rows < self.dense_from_rows else rows

    def embedding(self, token_ids: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
        ids = token_ids.to(torch.int64).contiguous()
        out = torch.empty(ids.numel(), weight.in_features)
        self._check(self.library.dequantize_rows(weight.kind, weight.blocks.data_ptr(), weight.in_features,
                                                 ids.data_ptr(), ids.numel(), out.data_ptr()), weight)
        return out

    @staticmethod
    def _check(status: int, weight: QuantizedWeight) -> None:
        if status != 0:
            raise ValueError(f"the quantized kernels cannot take ggml type {weight.kind} with "
                             f"{weight.in_features} inputs and {weight.out_features} outputs")
