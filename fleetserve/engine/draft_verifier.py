"""Verification of drafted tokens (speculative decoding) from the model's logits at every drafted position.

A step that verifies k drafts after a request's last known token computes k + 1 rows of logits: row i is
the distribution of the token after draft i - 1 (row 0: after the known token). Greedy requests keep drafts
while each equals its row's argmax, then take the argmax of the first row that disagrees (or of the last
row): exactly the tokens one-token steps would give from the same logits. Sampled requests keep the
target distribution exactly: at each drafted position a token is drawn from the target distribution p, and
the draft x is kept when the draw equals it. So x is kept with probability p(x), and otherwise the token is
distributed as p with x removed, renormalized: the rejection rule for a point-mass draft (the proposers
draft one token per position, with no probabilities). After k kept drafts one more token is drawn from the
last row. Every emitted token is one draw from the generator of its output position, as without speculation,
so a seeded request gives the same tokens whatever was drafted (up to rounding in the logits).
"""
from __future__ import annotations

import torch

from fleetserve.engine.sampler import Sampler, SampleResult
from fleetserve.engine.sampling_params import SamplingParams


@torch.inference_mode()
def verify_drafts(sampler: Sampler, logits: torch.Tensor, drafts: list[int], params: SamplingParams,
                  position: int) -> list[SampleResult]:
    """logits: [len(drafts) + 1, vocab] -> the accepted drafts and the token after them, as SampleResults;
    `position`: the output position of the first of them (the request's output length)."""
    logits = logits.float().cpu()
    if params.greedy:
        best = logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(drafts) and best[accepted] == drafts[accepted]:
            accepted += 1
        tokens = best[:accepted + 1]
    else:
        tokens = _rejection_sample(sampler, logits, drafts, params, position)
    results = [SampleResult(token) for token in tokens]
    if params.logprobs is not None:
        logprobs = torch.log_softmax(logits[:len(tokens)], dim=-1)
        for row, result in enumerate(results):
            result.logprob = float(logprobs[row, result.token_id])
            if params.logprobs:
                values, ids = logprobs[row].topk(params.logprobs)
                result.top_logprobs = list(zip(ids.tolist(), values.tolist()))
    return results


def _rejection_sample(sampler: Sampler, logits: torch.Tensor, drafts: list[int], params: SamplingParams,
                      position: int) -> list[int]:
    filtered = Sampler.apply_top_k_top_p(logits / params.temperature, [params] * logits.shape[0])
    probs = torch.softmax(filtered, dim=-1)
    tokens: list[int] = []
    for row in range(len(drafts) + 1):
        generator = sampler.generator(params, position + row)
        tokens.append(int(torch.multinomial(probs[row], 1, generator=generator)[0]))
        if row == len(drafts) or tokens[-1] != drafts[row]:
            break
    return tokens
