"""Suffix trees and SuffixDecoding's drafts: against counting substrings by brute force, and the proposer's
own tree, finished outputs and their FIFO eviction."""
from __future__ import annotations

import random
from collections import Counter

from fleetserve.speculative.config import SpeculativeConfig
from fleetserve.speculative.proposers import make_proposer
from fleetserve.speculative.suffix_proposer import SuffixProposer
from fleetserve.speculative.suffix_tree import SuffixTree


def suffix_config(**fields) -> SpeculativeConfig:
    return SpeculativeConfig(**{"method": "suffix", **fields})


def counted_draft(sequences: list[list[int]], depth: int, context: list[int], max_tokens: int, factor: float,
                  min_prob: float) -> tuple[list[int], float]:
    """SuffixDecoding's path draft from substring counts (each suffix cut to `depth` tokens)."""
    counts: Counter[tuple[int, ...]] = Counter()
    for seq in sequences:
        for start in range(len(seq)):
            for end in range(start + 1, min(start + depth, len(seq)) + 1):
                counts[tuple(seq[start:end])] += 1
    vocab = sorted({token for seq in sequences for token in seq})
    best: tuple[list[int], float] = ([], 0.0)
    for match_len in range(1, min(depth - 1, len(context)) + 1):
        path = tuple(context[len(context) - match_len:])
        if counts[path] == 0:
            break
        limit = min(max_tokens, int(match_len * factor + 1e-6))
        tokens: list[int] = []
        prob = score = 0.0
        prob = 1.0
        while len(tokens) < limit:
            followers = [(counts[path + (t,)], -t) for t in vocab if counts[path + (t,)]]
            if not followers:
                break
            count, negative_token = max(followers)
            prob *= count / counts[path]
            if prob < min_prob:
                break
            tokens.append(-negative_token)
            score += prob
            path += (-negative_token,)
        if tokens and score >= best[1]:
            best = (tokens, score)
    return best


def test_tree_drafts_match_substring_counts_through_growth_and_removal():
    for seed in range(12):
        rng = random.Random(seed)
        depth = rng.randint(2, 7)
        tree = SuffixTree(depth)
        kept: dict[int, list[int]] = {}
        for seq_id in range(6):
            seq = [rng.randrange(3) for _ in range(rng.randint(1, 40))]
            pieces = rng.randint(1, 4)
            for i in range(pieces):
                tree.extend(seq_id, seq[i * len(seq) // pieces:(i + 1) * len(seq) // pieces])
            kept[seq_id] = seq
            tree.seal()
            if rng.random() < 0.4:
                gone = rng.choice(sorted(kept))
                tree.remove(gone)
                del kept[gone]
            for _ in range(5):
                context = [rng.randrange(3) for _ in range(rng.randint(1, 10))]
                max_tokens, factor, min_prob = rng.randint(1, 6), rng.choice([0.5, 1.0, 2.0]), rng.choice([0, .1, .4])
                draft = tree.speculate(context, max_tokens, factor, min_prob)
                want = counted_draft(list(kept.values()), depth, context, max_tokens, factor, min_prob)
                assert (draft.tokens, draft.score) == want, (seed, context)


def test_growing_sequence_drafts_like_a_tree_built_at_once_and_like_the_counts():
    for seed in range(12):
        rng = random.Random(100 + seed)
        depth = rng.randint(2, 8)
        config = suffix_config(num_speculative_tokens=6, suffix_decoding_max_tree_depth=depth,
                               suffix_decoding_min_token_prob=rng.choice([0.0, 0.1, 0.3]))
        proposer = SuffixProposer(config)
        prompt = [rng.randrange(4) for _ in range(rng.randint(1, 20))]
        output: list[int] = []
        for _ in range(40):
            drafted = proposer.propose("r", prompt, output, 6)
            text = prompt + output
            at_once = SuffixTree(depth)
            at_once.extend(0, text)
            args = (6, config.suffix_decoding_max_spec_factor, config.suffix_decoding_min_token_prob)
            assert drafted == at_once.speculate(text, *args).tokens, (seed, text)
            assert drafted == counted_draft([text], depth, text, *args)[0], (seed, text)
            output.extend(rng.randrange(4) for _ in range(rng.randint(1, 3)))


def test_repeated_text_drafts_its_continuation():
    span = list(range(100, 120))
    proposer = make_proposer(suffix_config(num_speculative_tokens=8))
    # The draft is at most as long as the match (max_spec_factor 1).
    assert proposer.propose("r", span + [1, 2] + span[:6], [], 8) == span[6:12]
    assert proposer.propose("r", span + [1, 2] + span[:6], span[6:8], 8) == span[8:16]


def test_finished_output_drafts_for_a_new_request():
    proposer = SuffixProposer(suffix_config(num_speculative_tokens=8))
    answer = list(range(200, 230))
    proposer.propose("first", [1, 2, 3], answer[:-1], 8)
    proposer.finish("first")
    assert proposer.cached_outputs() == 1
    # A new prompt that never saw the answer drafts it once its output starts the same way.
    assert proposer.propose("second", [9, 8, 7], answer[:10], 8) == answer[10:18]


def test_the_final_output_given_at_finish_joins_the_finished_outputs_whole():
    proposer = SuffixProposer(suffix_config(num_speculative_tokens=8))
    answer = list(range(200, 230))
    proposer.propose("first", [1, 2, 3], answer[:5], 8)  # drafting saw only the start of the answer
    proposer.finish("first", answer)
    assert proposer.propose("second", [9, 8, 7], answer[:18], 8) == answer[18:26]


def test_eviction_forgets_the_oldest_finished_output():
    proposer = SuffixProposer(suffix_config(num_speculative_tokens=8, suffix_decoding_max_cached_requests=2))
    outputs = {name: [base + i for i in range(20)] for name, base in (("a", 300), ("b", 400), ("c", 500))}
    for name, output in outputs.items():
        proposer.propose(name, [1], output, 8)
        proposer.finish(name)
    assert proposer.cached_outputs() == 2
    assert proposer.propose("new-a", [2], outputs["a"][:8], 8) == []
    assert proposer.propose("new-b", [2], outputs["b"][:8], 8) == outputs["b"][8:16]
    assert proposer.propose("new-c", [2], outputs["c"][:8], 8) == outputs["c"][8:16]


def test_no_global_tree_when_nothing_is_cached():
    proposer = SuffixProposer(suffix_config(num_speculative_tokens=8, suffix_decoding_max_cached_requests=0))
    proposer.propose("a", [1], list(range(300, 320)), 8)
    proposer.finish("a")
    assert proposer.cached_outputs() == 0
    assert proposer.propose("b", [2], list(range(300, 308)), 8) == []


def tree_over(text: list[int], depth: int = 8) -> SuffixTree:
    tree = SuffixTree(depth)
    tree.extend(0, text)
    return tree


def test_min_token_prob_stops_at_a_branch():
    # After [5, 6] came 7 twice and 8 twice: each is half as likely, below a minimum of 0.6.
    text = [5, 6, 7, 1, 5, 6, 8, 2, 5, 6, 7, 3, 5, 6, 8, 4, 5, 6]
    assert tree_over(text).speculate(text, 8, 4.0, 0.6).tokens == []
    assert tree_over(text).speculate(text, 8, 4.0, 0.2).tokens[:1] == [7]
    # Before the branch the path is certain: [9] is always followed by [5, 6], then the branch.
    text = [9, 5, 6, 7, 9, 5, 6, 8, 9]
    draft = tree_over(text).speculate(text, 8, 4.0, 0.6)
    assert draft.tokens == [5, 6]


def test_spec_factor_bounds_the_draft_by_the_match_length():
    span = list(range(600, 640))
    text = span + [1] + span[:3]
    tree = tree_over(text, depth=24)
    assert tree.speculate(text, 32, 1.0, 0.1).tokens == span[3:6]
    assert tree.speculate(text, 32, 2.0, 0.1).tokens == span[3:9]
    assert tree.speculate(text, 32, 0.5, 0.1).tokens == span[3:4]
    assert tree.speculate(text, 2, 2.0, 0.1).tokens == span[3:5]


def test_finish_releases_the_request():
    proposer = SuffixProposer(suffix_config(num_speculative_tokens=4))
    proposer.propose("a", [1, 2, 3], [4], 4)
    proposer.propose("b", [1, 2, 3], [], 4)
    assert proposer.tracked_requests() == 2
    proposer.finish("a")
    proposer.finish("a")
    proposer.finish("never-seen")
    assert proposer.tracked_requests() == 1
    assert proposer.cached_outputs() == 1


def test_removing_every_sequence_empties_the_tree():
    rng = random.Random(7)
    tree = SuffixTree(5)
    for seq_id in range(4):
        tree.extend(seq_id, [rng.randrange(3) for _ in range(30)])
        tree.seal()
    for seq_id in range(4):
        tree.remove(seq_id)
    assert len(tree) == 0
    assert tree.speculate([0, 1, 2], 4, 1.0, 0.0).tokens == []
    assert tree._root.count == 0 and not tree._root.children
