"""Runs one scheduled step on the model: builds the flat token batch, the slot mapping and block tables,
runs the forward pass, and samples a token for every request that reached the end of its known tokens."""
from __future__ import annotations

from pathlib import Path

import torch

from fleetserve.engine.draft_verifier import verify_drafts
from fleetserve.engine.kv_cache import KVCacheManager
from fleetserve.engine.sampler import Sampler, SampleResult
from fleetserve.engine.scheduler import ScheduledRequest, SchedulerOutput
from fleetserve.kernels import cpu as cpu_kernels
from fleetserve.model.attention import AttentionMetadata, PrefillChunk
from fleetserve.model.llama import LlamaModel


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, seed: int = 0,
                 kv_cache_dtype: torch.dtype | None = None, kernel_cache_dir: Path | None = None) -> None:
        self.model = model
        self.device = model.device
        self.block_size = block_size
        c = model.config
        shape = (2, c.num_key_value_heads, num_blocks, block_size, c.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=kv_cache_dtype or model.dtype, device=self.device)
                          for _ in range(c.num_hidden_layers)]
        self.sampler = Sampler(seed)
        self.decode_kernel = None
        if self.device.type == "cpu" and model.dtype == torch.float32 and kernel_cache_dir is not None:
            self.decode_kernel = cpu_kernels.load(kernel_cache_dir)

    def _slots(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        bs = self.block_size
        return self._tensor([block_table[p // bs] * bs + p % bs for p in range(start, end)])

    def read_kv(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        """A copy of the KV of token positions [start, end), token-major so that any later part of it is
        contiguous: (tokens, layers, 2, kv_heads, head_dim)."""
        slots = self._slots(block_table, start, end)
        return torch.stack([cache.flatten(2, 3)[:, :, slots].permute(2, 0, 1, 3) for cache in self.kv_caches], 1)

    def write_kv(self, block_table: list[int], start: int, kv: torch.Tensor) -> None:
        """Store KV laid out as read_kv gives it at token positions start, start + 1, ..."""
        slots = self._slots(block_table, start, start + kv.shape[0])
        for layer, cache in enumerate(self.kv_caches):
            cache.flatten(2, 3)[:, :, slots] = kv[:, layer].permute(1, 2, 0, 3).to(cache.dtype)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def execute(self, out: SchedulerOutput, kv_cache: KVCacheManager) -> dict[str, list[SampleResult]]:
        """The sampled tokens of every request that reached the end of its known tokens: one, or for a request
        whose drafts were verified, the accepted drafts and the token after them."""
        bs = self.block_size
        # A verification is decode rows, one per token, each attending up to itself: the decode kernels
        # take it as they take separate sequences that share a block table.
        decodes = [s for s in out.scheduled if s.num_tokens == 1 or s.drafts]
        prefills = [s for s in out.scheduled if s.num_tokens > 1 and not s.drafts]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sample_items: list[ScheduledRequest] = []
        tables = {s.request.request_id: kv_cache.block_table(s.request.request_id) for s in decodes + prefills}
        decode_tables: list[list[int]] = []
        for item in decodes:
            request, start, n = item.request, item.start, item.num_tokens
            table = tables[request.request_id]
            input_ids.extend(request.token_ids_slice(start, start + 1))
            input_ids.extend(request.spec_token_ids[:item.drafts])
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            decode_tables.extend([table] * n)
            if item.samples:
                sample_rows.extend(range(len(input_ids) - n, len(input_ids)))
                sample_items.append(item)
        num_decode_rows = len(input_ids)
        meta = AttentionMetadata(slot_mapping=None, num_decodes=num_decode_rows)  # type: ignore[arg-type]
        for item in prefills:
            request, start, n = item.request, item.start, item.num_tokens
            table = tables[request.request_id]
            token_start = len(input_ids)
            input_ids.extend(request.token_ids_slice(start, start + n))
            positions.extend(range(start, start + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
            used = -(-(start + n) // bs)
            meta.prefills.append(PrefillChunk(token_start, token_start + n, start, self._tensor(table[:used])))
            if item.samples:
                sample_rows.append(len(input_ids) - 1)
                sample_items.append(item)
        if decodes:
            seq_lens_list = positions[:num_decode_rows]
            max_blocks = max(p // bs + 1 for p in seq_lens_list)
            padded = [t[:max_blocks] + [0] * (max_blocks - min(len(t), max_blocks)) for t in decode_tables]
            meta.decode_block_tables = self._tensor(padded)
            seq_lens = self._tensor([p + 1 for p in seq_lens_list])
            meta.decode_seq_lens = seq_lens
            meta.decode_kernel = self.decode_kernel
            if self.decode_kernel is None:
                key_positions = torch.arange(max_blocks * bs, device=self.device)
                meta.decode_mask = (key_positions.unsqueeze(0) < seq_lens.unsqueeze(1)).unsqueeze(1)
        meta.slot_mapping = self._tensor(slots)
        hidden = self.model(self._tensor(input_ids), self._tensor(positions), self.kv_caches, meta)
        if not sample_items:
            return {}
        logits = self.model.compute_logits(hidden[self._tensor(sample_rows)])
        results: dict[str, list[SampleResult]] = {}
        plain_rows: list[int] = []
        plain_items: list[ScheduledRequest] = []
        row = 0
        for item in sample_items:
            if item.drafts:
                request = item.request
                results[request.request_id] = verify_drafts(
                    self.sampler, logits[row:row + item.num_tokens], request.spec_token_ids[:item.drafts],
                    request.sampling_params, request.num_output_tokens)
                row += item.num_tokens
            else:
                plain_rows.append(row)
                plain_items.append(item)
                row += 1
        if plain_items:
            ids = [s.request.request_id for s in plain_items]
            sampled = self.sampler.sample(logits[plain_rows] if len(plain_rows) < row else logits,
                                          [s.request.sampling_params for s in plain_items],
                                          [s.request.num_output_tokens for s in plain_items])
            results.update((request_id, [result]) for request_id, result in zip(ids, sampled))
        return results
