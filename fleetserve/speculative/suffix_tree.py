"""A suffix trie of depth-bounded suffixes with counts, and SuffixDecoding's path drafts from it.

Every suffix of every sequence, cut to `max_depth` tokens, is a path from the root; a node's count is the
number of those paths that pass through or end at it, so child count / parent count estimates the
probability of the child's token after the parent's text.

A path that no other path shares is not spelled out node by node: its first unshared node keeps a tail, a
reference into the sequence it came from (SuffixDecoding's compressed leaves), so text that does not
repeat costs one node per token. A tail is spelled out one node at a time when another path follows it.
Tails of a finished sequence are complete; only one sequence grows at a time, and the paths that follow a
tail of the growing sequence start later in it, so they never outrun the tail."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Hashable, Iterable, Iterator, Sequence

_NO_TOKENS: list[int] = []


class _Node:
    __slots__ = ("count", "children", "best", "tail_seq", "tail_pos", "tail_start")

    def __init__(self) -> None:
        self.count = 1
        self.children: dict[int, _Node] | None = None
        self.best: int | None = None  # the child token with the highest count (the lowest token on a tie)
        # The one path continuing past this node, read from tail_seq[tail_pos:] up to its depth bound; a node
        # with a tail has no children.
        self.tail_seq: list[int] | None = None
        self.tail_pos = 0
        self.tail_start = 0  # where that path's suffix starts in tail_seq


@dataclass(frozen=True)
class Draft:
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0  # the sum of the tokens' estimated probabilities: the expected number accepted
    match_len: int = 0  # how many of the text's last tokens the draft's path matched


class SuffixTree:
    def __init__(self, max_depth: int):
        if max_depth < 1:
            raise ValueError(f"a suffix tree's max_depth must be >= 1, got {max_depth}")
        self.max_depth = max_depth
        self._root = _Node()
        self._root.count = 0
        self._sequences: dict[Hashable, list[int]] = {}
        # The growing sequence's suffixes still shorter than max_depth: (start, the node its path ends at,
        # or None while the path runs in its own tail).
        self._growing: Hashable | None = None
        self._open_paths: list[tuple[int, _Node | None]] = []

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._sequences

    def __len__(self) -> int:
        return len(self._sequences)

    def sequence(self, seq_id: Hashable) -> Sequence[int]:
        return self._sequences[seq_id]

    def extend(self, seq_id: Hashable, tokens: Iterable[int]) -> None:
        """Append tokens to a sequence (new, or the one growing)."""
        if self._growing != seq_id:
            if seq_id in self._sequences:
                raise ValueError(f"sequence {seq_id!r} was sealed; only the growing sequence can be extended")
            self.seal()
            self._growing = seq_id
            self._sequences[seq_id] = []
        seq = self._sequences[seq_id]
        for token in tokens:
            self._append(seq, token)

    def seal(self) -> None:
        """The growing sequence is complete: forget where its suffixes end (another one may grow now)."""
        self._growing = None
        self._open_paths = []

    def remove(self, seq_id: Hashable) -> None:
        """Take a sequence's suffixes out (counts drop; nodes no path reaches any more go)."""
        if seq_id == self._growing:
            self.seal()
        seq = self._sequences.pop(seq_id)
        depth = self.max_depth
        for start in range(len(seq)):
            node = self._root
            node.count -= 1
            for pos in range(start, min(start + depth, len(seq))):
                if node.tail_seq is not None:
                    # The path goes on past a node with a tail: the tail is this path's own.
                    assert node.tail_seq is seq and node.tail_start == start
                    node.tail_seq = None
                    break
                assert node.children is not None
                token = seq[pos]
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                if node.best == token:
                    node.best = max(node.children.items(), key=_by_count_then_lowest_token)[0] \
                        if node.children else None
                if child.count == 0:
                    break
                node = child

    def _append(self, seq: list[int], token: int) -> None:
        end = len(seq)
        seq.append(token)
        self._root.count += 1
        paths = self._open_paths
        paths.append((end, self._root))
        depth = self.max_depth
        kept: list[tuple[int, _Node | None]] = []
        for start, node in paths:
            if node is not None:
                node = self._step(node, token, seq, start, end)
            if end + 1 - start < depth:
                kept.append((start, node))
        self._open_paths = kept

    def _step(self, node: _Node, token: int, seq: list[int], start: int, pos: int) -> _Node | None:
        """Extend the path of the suffix starting at `start` from `node` by seq[pos] (== token)."""
        if node.tail_seq is not None:
            self._spell_out(node)
        children = node.children
        if children is None:
            children = node.children = {}
        child = children.get(token)
        if child is not None:
            child.count += 1
            best = node.best
            if best != token and (best is None or _beats(child, token, children[best], best)):
                node.best = token
            return child
        child = children[token] = _Node()
        best = node.best
        if best is None or _beats(child, token, children[best], best):
            node.best = token
        if pos + 1 - start < self.max_depth:
            child.tail_seq, child.tail_pos, child.tail_start = seq, pos + 1, start
            return None
        return child

    def _spell_out(self, node: _Node) -> None:
        """Replace the first token of a node's tail by a child node (that keeps the rest)."""
        seq, pos, start = node.tail_seq, node.tail_pos, node.tail_start
        assert seq is not None
        node.tail_seq = None
        if pos >= min(start + self.max_depth, len(seq)):
            return
        child = _Node()
        if pos + 1 - start < self.max_depth:
            child.tail_seq, child.tail_pos, child.tail_start = seq, pos + 1, start
        node.children = {seq[pos]: child}
        node.best = seq[pos]

    def _match(self, context: Sequence[int], begin: int) -> tuple[_Node, int] | None:
        """Where context[begin:] ends in the tree: a node, and how many tokens into its tail (or None)."""
        node, into_tail = self._root, 0
        for i in range(begin, len(context)):
            token = context[i]
            if into_tail == 0 and node.children is not None:
                child = node.children.get(token)
                if child is None:
                    return None
                node = child
                continue
            seq = node.tail_seq
            if seq is None:
                return None
            at = node.tail_pos + into_tail
            if at >= min(node.tail_start + self.max_depth, len(seq)) or seq[at] != token:
                return None
            into_tail += 1
        return node, into_tail

    def speculate(self, context: Sequence[int], max_tokens: int, max_spec_factor: float,
                  min_token_prob: float) -> Draft:
        """The best path draft after `context` over every match length of its last tokens (a longer match
        wins a tie)."""
        def matches() -> Iterator[tuple[int, _Node, int] | None]:
            for match_len in range(1, min(self.max_depth - 1, len(context)) + 1):
                found = self._match(context, len(context) - match_len)
                yield None if found is None else (match_len, *found)
        return self._best_draft(matches(), max_tokens, max_spec_factor, min_token_prob)

    def speculate_growing(self, max_tokens: int, max_spec_factor: float, min_token_prob: float) -> Draft:
        """`speculate` after the growing sequence itself: its suffixes' paths end where it left them."""
        if self._growing is None:
            return Draft()
        end = len(self._sequences[self._growing])

        def matches() -> Iterator[tuple[int, _Node, int] | None]:
            for start, node in reversed(self._open_paths):
                # A path still in its own tail has occurred once: this once, with nothing after it yet.
                yield None if node is None else (end - start, node, 0)
        return self._best_draft(matches(), max_tokens, max_spec_factor, min_token_prob)

    def _best_draft(self, matches: Iterator[tuple[int, _Node, int] | None], max_tokens: int,
                    max_spec_factor: float, min_token_prob: float) -> Draft:
        best_score, best_tokens, best_match_len = 0.0, _NO_TOKENS, 0
        # Matches with as many occurrences as the one shorter have the same ones, so they share one draft,
        # each cut to its length bound and the depth bound.
        shared_count = 0
        shared_tokens: list[int] = []
        scores: list[float] = []  # of the shared draft's first 1, 2, ... tokens
        for match in matches:
            if match is None:
                break
            match_len, node, into_tail = match
            if not self._continues(node, into_tail):
                # Every occurrence of a longer match holds one of this one, so none continues either.
                break
            count = node.count if into_tail == 0 else 1
            if count != shared_count:
                shared_count = count
                shared_tokens, probs = self._path_draft(node, into_tail, max_tokens, min_token_prob)
                scores = list(accumulate(probs))
            length = min(len(shared_tokens), int(match_len * max_spec_factor + 1e-6), self.max_depth - match_len)
            if length <= 0:
                continue
            score = scores[length - 1]
            if score >= best_score:
                best_score, best_match_len = score, match_len
                best_tokens = shared_tokens if length == len(shared_tokens) else shared_tokens[:length]
                if score >= max_tokens:
                    # Every token was certain: a longer match can only draft the same tokens or fewer.
                    break
        return Draft(list(best_tokens), best_score, best_match_len)

    def _continues(self, node: _Node, into_tail: int) -> bool:
        if node.tail_seq is not None:
            return node.tail_pos + into_tail < min(node.tail_start + self.max_depth, len(node.tail_seq))
        return into_tail == 0 and bool(node.children)

    def _path_draft(self, node: _Node, into_tail: int, limit: int,
                    min_token_prob: float) -> tuple[list[int], list[float]]:
        """Follow the most frequent child while the path's probability stays >= min_token_prob: the tokens
        and each one's probability."""
        tokens: list[int] = []
        probs: list[float] = []
        prob = 1.0
        while len(tokens) < limit:
            seq = node.tail_seq
            if seq is not None:
                at = node.tail_pos + into_tail
                if at >= min(node.tail_start + self.max_depth, len(seq)):
                    break
                if into_tail == 0:
                    prob *= 1 / node.count  # a tail is one path of the node's count
                if prob < min_token_prob:
                    break
                tokens.append(seq[at])
                into_tail += 1
            else:
                token = node.best
                if into_tail or token is None:
                    break
                assert node.children is not None
                child = node.children[token]
                prob *= child.count / node.count
                if prob < min_token_prob:
                    break
                tokens.append(token)
                node = child
            probs.append(prob)
        return tokens, probs


def _beats(node: _Node, token: int, other: _Node, other_token: int) -> bool:
    return node.count > other.count or (node.count == other.count and token < other_token)


def _by_count_then_lowest_token(item: tuple[int, _Node]) -> tuple[int, int]:
    return item[1].count, -item[0]
