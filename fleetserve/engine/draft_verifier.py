"""Verification of drafted tokens (speculative decoding) from the model's logits at every drafted position.

A step that verifies k drafts after a request's last known token computes k + 1 rows of logits: row i is
the distribution of the token after draft i - 1 (row 0: after the known token). Greedy requests keep drafts
while each equals its row's argmax, then take the argmax of the first row that disagrees (or of the last
row): exactly the tokens one-token steps would give from the same logits. Sampled requests keep the
target distribution exactly with rejection sampling for a point-mass draft (the proposers draft one token
per position, with no probabilities): draft x is accepted with probability p(x); if rejected, the token is
drawn from p with x removed, renormalized; after k accepted drafts one more token is drawn from the last
row. Each draw uses the request's own generator when it is seeded, so seeded requests reproduce.
"""
from __future__ import annotations

import torch

from fleetserve.engine.sampler import Sampler, SampleResult
from fleetserve.engine.sampling_params import SamplingParams


@torch.inference_mode()
def verify_drafts(sampler: Sampler, logits: torch.Tensor, drafts: list[int], request_id: str,
                  params: SamplingParams) -> list[SampleResult]:
    """logits: [len(drafts) + 1, vocab] -> the accepted drafts and the token after them, as SampleResults."""
    logits = logits.float().cpu()
    if params.greedy:
        best = logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(drafts) and best[accepted] == drafts[accepted]:
            accepted += 1
        tokens = best[:accepted + 1]
    else:
        tokens = _rejection_sample(sampler, logits, drafts, request_id, params)
    results = [SampleResult(token) for token in tokens]
    if params.logprobs is not None:
        logprobs = torch.log_softmax(logits[:len(tokens)], dim=-1)
        for row, result in enumerate(results):
            result.logprob = float(logprobs[row, result.token_id])
            if params.logprobs:
                values, ids = logprobs[row].topk(params.logprobs)
                result.top_logprobs = list(zip(ids.tolist(), values.tolist()))
    return results


def _rejection_sample(sampler: Sampler, logits: torch.Tensor, drafts: list[int], request_id: str,
                      params: SamplingParams) -> list[int]:
    filtered = Sampler.apply_top_k_top_p(logits / params.temperature, [params] * logits.shape[0])
    probs = torch.softmax(filtered, dim=-1)
    generator = sampler.generator(request_id, params)
    tokens: list[int] = []
    for row, draft in enumerate(drafts):
        if float(torch.rand((), generator=generator)) < float(probs[row, draft]):
            tokens.append(draft)
            continue
        residual = probs[row].clone()
        residual[draft] = 0.0
        tokens.append(int(torch.multinomial(residual, 1, generator=generator)[0]))
        return tokens
    tokens.append(int(torch.multinomial(probs[len(drafts)], 1, generator=generator)[0]))
    return tokens
