"""Speculative decoding on the real default model: greedy requests give token for token what they give
without it (batch 1 and batched, prefix caching on), verified positions' logprobs match single-token
decoding, seeded sampled requests reproduce, counters count, and a bad config stops at once."""
from __future__ import annotations

import pytest

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.workload.repetitive import prompt_messages, repetitive_messages

METHODS = {"ngram": {"method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_min": 2,
                     "prompt_lookup_max": 4},
           "suffix": {"method": "suffix", "num_speculative_tokens": 8}}
# Logprobs from a verification's rows against one-token steps: the same arithmetic over a different number
# of rows, so the block kernels' sums may round differently in the last bits.
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module", params=sorted(METHODS))
def spec_llm(request):
    return LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="256MiB", max_num_seqs=16,
               max_num_batched_tokens=256, speculative_config=METHODS[request.param])


def prompts_of(llm: LLM, count: int) -> list[list[int]]:
    return [llm.chat_prompt(messages) for messages in prompt_messages(count)]


def greedy(max_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, **extra)


def test_greedy_tokens_are_those_without_speculation(llm, spec_llm):
    prompts = prompts_of(llm, 12)
    expected = [c.token_ids for c in llm.generate(prompts, greedy(40))]
    stats = spec_llm.engine.speculation.stats
    accepted_before = stats.num_accepted_tokens
    assert [c.token_ids for c in spec_llm.generate(prompts, greedy(40))] == expected  # batched
    assert [spec_llm.generate([p], greedy(40))[0].token_ids for p in prompts[:4]] == expected[:4]  # batch 1
    assert stats.num_accepted_tokens > accepted_before  # drafts were verified and some kept


@pytest.mark.slow
def test_greedy_tokens_are_those_without_speculation_on_100_prompts(llm, spec_llm):
    prompts = prompts_of(llm, 100)
    expected = [c.token_ids for c in llm.generate(prompts, greedy(32))]
    assert [c.token_ids for c in spec_llm.generate(prompts, greedy(32))] == expected
    assert [spec_llm.generate([p], greedy(32))[0].token_ids for p in prompts[:30]] == expected[:30]


def test_a_near_tie_resolves_as_without_speculation_with_a_bf16_cache():
    """Position 52 of this answer is a near tie (two tokens 0.01 apart in logprob); a bf16 KV cache turns the
    last-bit differences of other arithmetic into visible ones. The block kernels give a row the same
    arithmetic whatever the step's other rows, and drafts never move a step to another kernel, so the tie
    resolves the same way."""
    base = LLM(kv_cache_dtype="bfloat16", kv_cache_memory="64MiB")
    spec = LLM(kv_cache_dtype="bfloat16", kv_cache_memory="64MiB", speculative_config=METHODS["ngram"])
    prompt = base.chat_prompt(repetitive_messages(3, passages=3))
    expected = base.generate([prompt], greedy(64))[0].token_ids
    assert spec.generate([prompt], greedy(64))[0].token_ids == expected
    assert spec.engine.speculation.stats.num_accepted_tokens > 0


def test_logprobs_of_verified_positions_match_single_token_decoding(llm, spec_llm):
    prompt = prompts_of(llm, 1)[0]
    expected = llm.generate([prompt], greedy(30, logprobs=3))[0]
    got = spec_llm.generate([prompt], greedy(30, logprobs=3))[0]
    assert got.token_ids == expected.token_ids
    for ours, reference in zip(got.logprobs, expected.logprobs):
        assert ours.logprob == pytest.approx(reference.logprob, abs=LOGPROB_TOLERANCE)
        assert [t for t, _ in ours.top] == [t for t, _ in reference.top]


def test_stop_strings_and_stop_tokens_end_a_verified_run_where_they_would(llm, spec_llm):
    prompt = prompts_of(llm, 1)[0]
    full = llm.generate([prompt], greedy(40))[0]
    stop_token = full.token_ids[12]
    for params in (greedy(40, stop=[full.text[20:26]]), greedy(40, stop_token_ids=[stop_token])):
        assert spec_llm.generate([prompt], params)[0].token_ids == llm.generate([prompt], params)[0].token_ids


def test_seeded_sampled_requests_reproduce_and_match_no_speculation(llm, spec_llm):
    """One draw per emitted token from the request's generator, whatever was drafted: the same tokens as
    without speculation, run after run (the suffix proposer's global tree grows between the runs)."""
    prompt = prompts_of(spec_llm, 1)[0]

    def params() -> SamplingParams:
        return SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=7)

    expected = llm.generate([prompt], params())[0].token_ids
    assert spec_llm.generate([prompt], params())[0].token_ids == expected
    assert spec_llm.generate([prompt], params())[0].token_ids == expected


def test_counters_count_drafts_and_accepted_tokens(spec_llm):
    stats = spec_llm.engine.speculation.stats
    before = (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens)
    spec_llm.generate(prompts_of(spec_llm, 1), greedy(40))
    assert stats.num_drafts > before[0] and stats.num_draft_tokens >= stats.num_accepted_tokens
    assert stats.accepted_per_position[0] <= stats.num_drafts
    assert sum(stats.accepted_per_position) == stats.num_accepted_tokens


@pytest.mark.parametrize("config, message", [
    ({"method": "eagle"}, "not known"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens must be from 1"),
    ({"method": "ngram", "num_speculative_tokens": 99}, "num_speculative_tokens must be from 1"),
    ({"method": "ngram"}, "needs num_speculative_tokens"),
    ('{"method": "suffix", ', "not valid JSON"),
    ({"method": "suffix", "speculative_model": "x"}, "unknown speculative config field"),
])
def test_a_bad_config_stops_at_start_with_a_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        LLM(speculative_config=config)
