"""Prompt lookup drafts what followed the text's last n-gram earlier, by vLLM's rule."""
from __future__ import annotations

import random

import pytest

from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.speculative.ngram import NgramProposer
from fleetserve.speculative.proposers import make_proposer


def proposer(low: int, high: int, k: int = 8) -> NgramProposer:
    return NgramProposer(SpeculativeConfig(method="ngram", num_speculative_tokens=k, prompt_lookup_min=low,
                                           prompt_lookup_max=high))


def vllm_rule(tokens: list[int], low: int, high: int, k: int) -> list[int]:
    """vLLM's KMP scan over the reversed text (v1/spec_decode/ngram_proposer.py), step for step."""
    total = len(tokens)
    if total < low or k <= 0:
        return []
    rev = tokens[::-1]
    lps = [0] * high
    longest = position = prev = 0
    i = 1
    while i < total:
        if rev[prev] == rev[i]:
            prev += 1
            if prev >= longest:
                longest, position = prev, i
            if i < high:
                lps[i] = prev
            if prev == high:
                prev = lps[high - 1]
            i += 1
        elif prev != 0:
            prev = lps[prev - 1]
        else:
            i += 1
    if longest < low:
        return []
    start = total - 1 - position + longest
    return tokens[start:start + min(k, total - start)]


def test_vllm_docstring_example():
    # [1,2,3,4,2,3]: [4,2,3] occurs nowhere earlier; [2,3] does, followed by only 3 tokens.
    assert proposer(2, 3, k=4).propose("r", [1, 2, 3, 4, 2, 3], [], 4) == [4, 2, 3]


def test_drafts_the_continuation_of_a_repeated_span():
    text = [7, 8, 9, 10, 11, 12, 13, 14, 50, 51, 7, 8, 9]
    assert proposer(2, 3).propose("r", text[:5], text[5:], 3) == [10, 11, 12]


def test_nothing_without_a_match_or_below_the_shortest_ngram():
    assert proposer(1, 3).propose("r", [1, 2, 3, 4, 5], [6], 4) == []
    # [5, 9] occurs earlier, but 2-grams are below the minimum of 3.
    assert proposer(3, 4).propose("r", [5, 9, 1, 2, 5, 9], [], 4) == []
    assert proposer(2, 4).propose("r", [5, 9, 1, 2, 5, 9], [], 4) == [1, 2, 5, 9]
    assert proposer(2, 2).propose("r", [3], [], 4) == []


def test_longest_ngram_wins_and_of_its_occurrences_the_earliest():
    # The 1-gram [4] last occurred before 60; the 2-gram [3, 4] before 40 then 41: the longer wins, earliest.
    text = [3, 4, 40, 3, 4, 41, 4, 60, 3, 4]
    assert proposer(1, 2, k=1).propose("r", text, [], 1) == [40]
    assert proposer(1, 1, k=1).propose("r", text, [], 1) == [40]
    # Longest is capped by prompt_lookup_max: a 3-gram match elsewhere does not count with max 2.
    text = [1, 2, 3, 70, 9, 2, 3, 71, 9, 2, 3]
    assert proposer(2, 3, k=1).propose("r", text, [], 1) == [71]
    assert proposer(2, 2, k=1).propose("r", text, [], 1) == [70]


def test_max_draft_and_the_end_of_the_text_bound_the_draft():
    text = [1, 2, 3, 4, 5, 6, 1, 2]
    assert proposer(2, 2, k=8).propose("r", text, [], 3) == [3, 4, 5]
    assert proposer(2, 2, k=2).propose("r", text, [], 8) == [3, 4]
    # Overlapping the text's own last n-gram is allowed, never reading past the last token.
    assert proposer(2, 2, k=8).propose("r", [5, 5, 5], [], 8) == [5]


def test_incremental_index_agrees_with_vllms_scan_on_random_streams():
    for seed in range(20):
        rng = random.Random(seed)
        low = rng.randint(1, 3)
        high = rng.randint(low, 5)
        k = rng.randint(1, 6)
        prompt = [rng.randrange(4) for _ in range(rng.randint(1, 30))]
        ngram = proposer(low, high, k=k)
        output: list[int] = []
        for _ in range(60):
            max_draft = rng.randint(1, 8)
            want = vllm_rule(prompt + output, low, high, min(k, max_draft))
            assert ngram.propose("r", prompt, output, max_draft) == want, (seed, prompt, output)
            output.extend(rng.randrange(4) for _ in range(rng.randint(1, 3)))


def test_requests_are_separate_and_finish_releases_them():
    ngram = proposer(2, 2)
    assert ngram.propose("a", [1, 2, 3, 1, 2], [], 4) == [3, 1, 2]
    assert ngram.propose("b", [1, 2], [], 4) == []
    assert ngram.tracked_requests() == 2
    ngram.finish("a")
    ngram.finish("a")
    assert ngram.tracked_requests() == 1


def test_factory_makes_the_named_proposer():
    assert isinstance(make_proposer(SpeculativeConfig(method="ngram", num_speculative_tokens=4)), NgramProposer)
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        NgramProposer(SpeculativeConfig(method="suffix"))
