"""The choice of draft lengths: drafts that raise the step's expected tokens per second, and no others."""
from __future__ import annotations

from fleetserve.perf.model import StepShape
from fleetserve.speculative.draft_length import Candidate, DraftLengths


class LinearCost:
    """A step of fixed cost plus a cost per decode row, as on a CPU that reads the weights once a step."""

    def __init__(self, fixed: float = 0.013, per_row: float = 0.003, per_prompt_token: float = 0.001) -> None:
        self.fixed, self.per_row, self.per_prompt_token = fixed, per_row, per_prompt_token

    def step_time(self, shape: StepShape) -> float:
        return self.fixed + self.per_row * shape.decode_seqs + self.per_prompt_token * shape.prefill_tokens


def accepting(lengths: DraftLengths, request_id: str, accepted: int, rejected: int) -> None:
    for _ in range(accepted):
        lengths.observe(request_id, 1, 1)
    for _ in range(rejected):
        lengths.observe(request_id, 1, 0)


def test_a_request_whose_drafts_are_accepted_drafts_several_at_batch_one():
    lengths = DraftLengths(LinearCost())
    accepting(lengths, "a", accepted=40, rejected=4)  # about 0.9 per draft
    chosen = lengths.choose([Candidate("a", 8, 100)], decode_seqs=1, decode_context=100)
    assert 3 <= chosen["a"] <= 8


def test_a_request_whose_drafts_fail_drafts_none():
    lengths = DraftLengths(LinearCost())
    accepting(lengths, "a", accepted=1, rejected=30)
    assert lengths.choose([Candidate("a", 8, 100)], decode_seqs=1, decode_context=100) == {"a": 0}


def test_a_large_batch_drafts_less_than_a_lone_request():
    lengths = DraftLengths(LinearCost())
    for index in range(32):
        accepting(lengths, f"r{index}", accepted=10, rejected=5)
    alone = lengths.choose([Candidate("r0", 8, 100)], decode_seqs=1, decode_context=100)["r0"]
    batch = lengths.choose([Candidate(f"r{i}", 8, 100) for i in range(32)], decode_seqs=32, decode_context=3200)
    assert alone > 0 and sum(batch.values()) < 32 * alone
    assert all(count == 0 for count in batch.values())  # each row costs as much as a whole token's share


def test_the_row_bound_caps_the_drafts_of_the_step():
    lengths = DraftLengths(LinearCost(per_row=0.0001))
    for name in "ab":
        accepting(lengths, name, accepted=50, rejected=1)
    chosen = lengths.choose([Candidate("a", 8, 100), Candidate("b", 8, 100)], decode_seqs=2, decode_context=200,
                            max_rows=8)
    assert sum(chosen.values()) == 6
    assert lengths.choose([Candidate("a", 8, 100)], decode_seqs=8, decode_context=800, max_rows=8) == {"a": 0}


def test_without_adaptation_every_draft_found_is_kept_within_the_rows():
    lengths = DraftLengths(LinearCost(), adaptive=False)
    accepting(lengths, "a", accepted=0, rejected=30)
    assert lengths.choose([Candidate("a", 5, 100), Candidate("b", 5, 100)], 2, 200) == {"a": 5, "b": 5}
    assert lengths.choose([Candidate("a", 5, 100), Candidate("b", 5, 100)], 2, 200, max_rows=8) == {"a": 5, "b": 1}


def test_release_forgets_a_request():
    lengths = DraftLengths(LinearCost())
    accepting(lengths, "a", accepted=0, rejected=30)
    lengths.release("a")
    assert lengths.rate("a") == 0.5


def test_beside_a_prompt_chunk_a_row_is_cheap_and_drafts_pay_sooner():
    lengths = DraftLengths(LinearCost())
    accepting(lengths, "a", accepted=3, rejected=12)  # about 0.24 per draft
    alone = lengths.choose([Candidate("a", 8, 100)], decode_seqs=4, decode_context=400)
    beside_chunk = lengths.choose([Candidate("a", 8, 100)], decode_seqs=4, decode_context=400, prefill_tokens=256)
    assert alone == {"a": 0} and beside_chunk["a"] >= 1
