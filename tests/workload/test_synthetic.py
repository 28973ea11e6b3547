"""Synthetic workloads: arrival processes, length distributions, shared prefixes, sessions, the CLI spec."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from fleetserve.workload import LengthDist, parse_synthetic_spec, synthesize_prompts, synthetic_workload


class WordTokenizer:
    """One id per whitespace-separated word, ids handed out on first sight."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.words: list[str] = []

    def encode(self, text: str) -> list[int]:
        for word in text.split():
            self.ids.setdefault(word, len(self.words))
            if len(self.words) < len(self.ids):
                self.words.append(word)
        return [self.ids[word] for word in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


def gaps(arrivals: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]


def test_length_dists_parse_and_sample_in_range() -> None:
    rng = np.random.default_rng(0)
    assert LengthDist.parse("fixed:128").sample(rng, 3) == [128, 128, 128]
    uniform = LengthDist.parse("uniform:64:512").sample(rng, 2000)
    assert min(uniform) >= 64 and max(uniform) <= 512 and len(set(uniform)) > 100
    lognormal = LengthDist.parse("lognormal:200:0.8").sample(rng, 20000)
    assert min(lognormal) >= 1
    assert statistics.mean(lognormal) == pytest.approx(200, rel=0.05)
    assert min(LengthDist.parse("lognormal:1:3").sample(rng, 1000)) == 1  # clipped, never 0
    assert str(LengthDist.parse("uniform:1:9")) == "uniform:1:9"


@pytest.mark.parametrize("text", ["normal:5", "fixed", "fixed:0", "fixed:1.5", "uniform:9:3", "uniform:a:b",
                                  "lognormal:100", "lognormal:100:-1"])
def test_bad_length_dist_names_the_string(text: str) -> None:
    with pytest.raises(ValueError, match=f"length distribution '{text}'"):
        LengthDist.parse(text)


def test_poisson_arrivals_start_at_zero_with_the_requested_rate() -> None:
    workload = synthetic_workload(2000, rate=10.0, seed=3)
    arrivals = [spec.arrival_s for spec in workload]
    assert len(workload) == 2000 and arrivals[0] == 0.0
    assert all(gap >= 0 for gap in gaps(arrivals))
    assert statistics.mean(gaps(arrivals)) == pytest.approx(0.1, rel=0.1)
    assert statistics.stdev(gaps(arrivals)) / statistics.mean(gaps(arrivals)) == pytest.approx(1.0, rel=0.15)


def test_gamma_burstiness_sets_the_coefficient_of_variation() -> None:
    workload = synthetic_workload(4000, rate=5.0, arrival="gamma", burstiness=0.25, seed=1)
    inter = gaps([spec.arrival_s for spec in workload])
    assert statistics.mean(inter) == pytest.approx(0.2, rel=0.1)
    assert statistics.stdev(inter) / statistics.mean(inter) == pytest.approx(2.0, rel=0.15)


def test_constant_and_infinite_rates() -> None:
    constant = synthetic_workload(5, rate=4.0, arrival="constant")
    assert [spec.arrival_s for spec in constant] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    burst = synthetic_workload(5, rate=float("inf"))
    assert {spec.arrival_s for spec in burst} == {0.0}


def test_same_seed_same_workload() -> None:
    kwargs = dict(num_requests=50, rate=3.0, prompt_len="uniform:10:90", output_len="lognormal:40:0.5")
    assert synthetic_workload(**kwargs, seed=7) == synthetic_workload(**kwargs, seed=7)
    assert synthetic_workload(**kwargs, seed=7) != synthetic_workload(**kwargs, seed=8)


def test_shared_prefix_groups_share_their_prefix_tokens() -> None:
    workload = synthetic_workload(6, rate=1.0, prompt_len="fixed:20", output_len="fixed:4",
                                  shared_prefix_groups=2, shared_prefix_tokens=50)
    assert all(spec.prompt_tokens == 70 for spec in workload)
    assert [spec.prefix_ids for spec in workload] == [[0], [1], [0], [1], [0], [1]]
    specs = synthesize_prompts(workload, WordTokenizer()).requests
    assert specs[0].prompt_token_ids[:50] == specs[2].prompt_token_ids[:50] == specs[4].prompt_token_ids[:50]
    assert specs[0].prompt_token_ids[:50] != specs[1].prompt_token_ids[:50]
    assert specs[0].prompt_token_ids[50:] != specs[2].prompt_token_ids[50:]


def test_sessions_grow_their_prompt_from_every_earlier_turn() -> None:
    workload = synthetic_workload(None, rate=0.5, prompt_len="uniform:5:100", output_len="uniform:5:100",
                                  sessions=3, turns_per_session=4, think_time_s=7.0, seed=2)
    assert len(workload) == 12
    tokenizer = WordTokenizer()
    specs = synthesize_prompts(workload, tokenizer).requests
    for session in range(3):
        turns = sorted((s for s in specs if s.session_id == f"session-{session}"), key=lambda s: s.turn)
        assert [s.turn for s in turns] == [0, 1, 2, 3]
        for earlier, later in zip(turns, turns[1:]):
            assert later.arrival_s == pytest.approx(earlier.arrival_s + 7.0)
            assert later.prompt_tokens > earlier.prompt_tokens + earlier.output_tokens
            assert later.prefix_ids[:len(earlier.prefix_ids)] == earlier.prefix_ids
            assert later.prompt_token_ids[:earlier.prompt_tokens] == earlier.prompt_token_ids
        assert all(len(s.prompt_token_ids) == s.prompt_tokens for s in turns)
    first_turn_ids = {s.prefix_ids[0] for s in specs if s.turn == 0}
    assert len(first_turn_ids) == 3  # sessions share nothing with each other


def test_sessions_inside_prefix_groups() -> None:
    workload = synthetic_workload(4, rate=1.0, prompt_len="fixed:10", output_len="fixed:10",
                                  shared_prefix_groups=1, shared_prefix_tokens=30, sessions=2, turns_per_session=2)
    turn_one = [s for s in workload if s.turn == 1]
    assert [s.prompt_tokens for s in turn_one] == [30 + 10 + 10 + 10] * 2
    assert all(s.prefix_ids[0] == 0 and s.prefix_block_tokens == 30 for s in workload)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(num_requests=5, rate=0.0), "rate must be > 0"),
    (dict(num_requests=5, rate=1.0, arrival="burst"), "unknown arrival process 'burst'"),
    (dict(num_requests=5, rate=1.0, burstiness=0.5), "burstiness=0.5 needs arrival='gamma'"),
    (dict(num_requests=5, rate=1.0, shared_prefix_groups=2), "set both or neither"),
    (dict(num_requests=5, rate=1.0, turns_per_session=3), "turns_per_session=3 needs sessions > 0"),
    (dict(num_requests=5, rate=1.0, sessions=2, turns_per_session=2), "num_requests=5 but sessions=2"),
    (dict(num_requests=5, rate=1.0, prompt_len="fixed:-3"), "'fixed:-3'"),
])
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic_workload(**kwargs)


def test_parse_synthetic_spec_builds_a_workload() -> None:
    text = "rate=4,n=100,prompt=uniform:64:512,output=fixed:128,arrival=gamma,burstiness=0.5"
    kwargs = parse_synthetic_spec(text)
    assert kwargs["rate"] == 4.0 and kwargs["num_requests"] == 100 and kwargs["burstiness"] == 0.5
    assert kwargs["prompt_len"] == LengthDist("uniform", 64, 512)
    workload = synthetic_workload(**kwargs)
    assert len(workload) == 100 and all(64 <= s.prompt_tokens <= 512 for s in workload)
    sessions = parse_synthetic_spec("rate=1, sessions=3, turns=2, think=1.5")
    assert len(synthetic_workload(**sessions)) == 6


@pytest.mark.parametrize(("text", "message"), [
    ("rate=4,n=10,colour=red", "unknown key 'colour'"),
    ("rate=fast,n=10", "rate='fast' is not float"),
    ("rate=4,n=ten", "n='ten' is not int"),
    ("rate=4,n=10,prompt=uniform:5", "'uniform:5'"),
    ("n=10", "needs rate="),
    ("rate=4", "needs n="),
    ("rate=4,n", "'n' is not key=value"),
    ("rate=4,rate=5,n=1", "'rate' is given twice"),
])
def test_parse_synthetic_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_synthetic_spec(text)
