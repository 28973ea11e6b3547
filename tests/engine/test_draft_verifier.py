"""Verification of drafts from the model's logits: greedy keeps exactly the argmax tokens, and rejection
sampling for a point-mass draft reproduces the target distribution (chi-square tests with many draws)."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from fleetserve.engine.draft_verifier import verify_drafts
from fleetserve.engine.sampler import Sampler
from fleetserve.engine.sampling_params import SamplingParams

VOCAB = 6


def logits_rows(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 1.5


def test_greedy_keeps_drafts_while_they_are_the_argmax_then_takes_the_argmax():
    logits = logits_rows(4)
    best = logits.argmax(dim=-1).tolist()
    params = SamplingParams(temperature=0)
    wrong = (best[1] + 1) % VOCAB
    tokens = [r.token_id for r in verify_drafts(Sampler(), logits, [best[0], wrong, best[2]], params, 0)]
    assert tokens == [best[0], best[1]]
    tokens = [r.token_id for r in verify_drafts(Sampler(), logits, best[:3], params, 0)]
    assert tokens == best  # all three accepted, then the last row's argmax


def draw_counts(logits: torch.Tensor, drafts: list[int], params: SamplingParams, draws: int) -> torch.Tensor:
    """How often each token comes out first, and (from the draws that kept the first draft) second."""
    sampler = Sampler(seed=1)
    first = torch.zeros(VOCAB)
    second = torch.zeros(VOCAB)
    for _ in range(draws):
        tokens = [r.token_id for r in verify_drafts(sampler, logits, drafts, params, 0)]
        first[tokens[0]] += 1
        if tokens[0] == drafts[0]:
            second[tokens[1]] += 1
    return torch.stack([first, second])


def target(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    filtered = Sampler.apply_top_k_top_p(logits / params.temperature, [params] * logits.shape[0])
    return torch.softmax(filtered, dim=-1)


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4),
                                    SamplingParams(temperature=1.3, top_p=0.9)], ids=["plain", "top_k", "top_p"])
@pytest.mark.parametrize("draft", [0, 3], ids=["likely_draft", "other_draft"])
def test_rejection_sampling_keeps_the_target_distribution(params, draft):
    logits = logits_rows(2, seed=draft)
    logits[0, 0] += 2.0  # token 0 likely at the first position
    probs = target(logits, params)
    counts = draw_counts(logits, [draft], params, draws=4000)
    for row in range(2):
        expected = probs[row] * counts[row].sum()
        support = expected > 0
        assert counts[row][~support].sum() == 0  # nothing outside top-k / top-p ever comes out
        if support.sum() < 2:
            continue
        result = chisquare(counts[row][support].numpy(), expected[support].numpy())
        assert result.pvalue > 1e-3, (row, counts[row], expected)


def test_a_seeded_request_reproduces_its_verifications():
    logits = logits_rows(4, seed=5)
    params = SamplingParams(temperature=1.0, seed=42)
    runs = []
    for _ in range(2):
        sampler = Sampler(seed=0)
        runs.append([[r.token_id for r in verify_drafts(sampler, logits, [1, 2, 3], params, 0)]
                     for _ in range(20)])
    assert runs[0] == runs[1]


def test_logprobs_are_those_of_each_emitted_position():
    logits = logits_rows(3, seed=9)
    best = logits.argmax(dim=-1).tolist()
    results = verify_drafts(Sampler(), logits, best[:2], SamplingParams(temperature=0, logprobs=2), 0)
    expected = torch.log_softmax(logits, dim=-1)
    for row, result in enumerate(results):
        assert result.logprob == pytest.approx(float(expected[row, best[row]]), abs=1e-6)
        assert [token for token, _ in result.top_logprobs] == expected[row].topk(2).indices.tolist()
