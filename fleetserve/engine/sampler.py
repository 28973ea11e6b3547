"""Turns logits into tokens: greedy, temperature, top-k, top-p, per-request seeds, and logprobs.

Each seeded request draws from its own generator, so its tokens do not depend on what it is batched with.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fleetserve.engine.sampling_params import SamplingParams


@dataclass
class SampleResult:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.default_generator = torch.Generator().manual_seed(seed)
        self.generators: dict[str, torch.Generator] = {}

    def release(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def generator(self, request_id: str, params: SamplingParams) -> torch.Generator:
        generator = self.generators.get(request_id)
        if generator is None:
            if params.seed is None:
                return self.default_generator
            generator = torch.Generator().manual_seed(params.seed)
            self.generators[request_id] = generator
        return generator

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, request_ids: list[str], params: list[SamplingParams]) -> list[SampleResult]:
        logits = logits.float().cpu()
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if random_rows:
            rows = torch.tensor(random_rows)
            scaled = logits[rows] / torch.tensor([params[i].temperature for i in random_rows]).unsqueeze(1)
            probs = torch.softmax(self.apply_top_k_top_p(scaled, [params[i] for i in random_rows]), dim=-1)
            for j, i in enumerate(random_rows):
                generator = self.generator(request_ids[i], params[i])
                tokens[i] = torch.multinomial(probs[j], 1, generator=generator)[0]
        token_list = tokens.tolist()
        results = [SampleResult(t) for t in token_list]
        wants = [i for i, p in enumerate(params) if p.logprobs is not None]
        if wants:
            logprobs = torch.log_softmax(logits[wants], dim=-1)
            for j, i in enumerate(wants):
                results[i].logprob = float(logprobs[j, token_list[i]])
                k = params[i].logprobs or 0
                if k:
                    values, ids = logprobs[j].topk(k)
                    results[i].top_logprobs = list(zip(ids.tolist(), values.tolist()))
        return results

    @staticmethod
    def apply_top_k_top_p(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        top_k = [p.top_k if p.top_k > 0 else logits.shape[1] for p in params]
        top_p = [p.top_p for p in params]
        if all(k >= logits.shape[1] for k in top_k) and all(p >= 1.0 for p in top_p):
            return logits
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        positions = torch.arange(logits.shape[1]).unsqueeze(0)
        remove = positions >= torch.tensor(top_k).unsqueeze(1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep the smallest set whose mass reaches top_p: drop a token once the mass before it is enough.
        remove |= (cumulative - sorted_logits.softmax(dim=-1)) >= torch.tensor(top_p).unsqueeze(1)
        remove[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        return torch.empty_like(logits).scatter_(1, order, sorted_logits)
