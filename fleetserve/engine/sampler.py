"""Turns logits into tokens: greedy, temperature, top-k, top-p, per-request seeds, and logprobs.

A seeded request's draw for its output token at position p comes from a generator seeded with (seed, p)
alone, so its tokens depend neither on what it is batched with nor on where its earlier tokens were
sampled: a request resumed on another replica with the tokens it had (fleetserve.fleet.stream_migration)
draws exactly what it would have drawn where it started.
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


_MASK64 = (1 << 64) - 1


def position_seed(seed: int, position: int) -> int:
    """A 64-bit seed for the draw at output `position` of a request seeded with `seed` (SplitMix64's mixing
    of the pair, so nearby seeds and positions give unrelated streams)."""
    x = (seed * 0x9E3779B97F4A7C15 + position) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.default_generator = torch.Generator().manual_seed(seed)
        self._seeded = torch.Generator()

    def generator(self, params: SamplingParams, position: int) -> torch.Generator:
        """The generator for the draw of output token `position`: the shared one for an unseeded request."""
        if params.seed is None:
            return self.default_generator
        return self._seeded.manual_seed(position_seed(params.seed, position))

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, params: list[SamplingParams], positions: list[int]) -> list[SampleResult]:
        """One token per row; `positions[i]`: the output position row i samples (its request's output length)."""
        logits = logits.float().cpu()
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if random_rows:
            rows = torch.tensor(random_rows)
            scaled = logits[rows] / torch.tensor([params[i].temperature for i in random_rows]).unsqueeze(1)
            probs = torch.softmax(self.apply_top_k_top_p(scaled, [params[i] for i in random_rows]), dim=-1)
            for j, i in enumerate(random_rows):
                tokens[i] = torch.multinomial(probs[j], 1, generator=self.generator(params[i], positions[i]))[0]
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
