"""The cost of a decode row from the engine's decode-only steps, robust to the machine's drift."""
from __future__ import annotations

import pytest

from fleetserve.engine.decode_row_cost import DecodeRowCost
from fleetserve.perf.model import StepShape


class Fixed:
    def step_time(self, shape: StepShape) -> float:
        return 1.0


def decode(rows: int, context: int = 100) -> StepShape:
    return StepShape(0, rows, context * rows, 0)


def test_it_defers_to_the_fallback_until_two_row_counts_ran():
    cost = DecodeRowCost(Fixed())
    assert cost.step_time(decode(3)) == 1.0
    cost.observe(decode(1), 0.010)
    assert cost.step_time(decode(3)) == 1.0
    cost.observe(decode(2), 0.014)
    assert cost.step_time(decode(3)) == pytest.approx(0.018)


def test_the_slope_is_the_cost_of_a_row_while_the_machine_slows_and_the_context_grows():
    cost = DecodeRowCost(Fixed())
    for step in range(300):
        drift = 1.0 + step / 300  # the machine slows to half its speed over the run
        rows = 1 if step % 3 else 4
        cost.observe(decode(rows, context=100 + step), drift * (0.012 + 0.003 * (rows - 1)))
    per_row = cost.step_time(decode(5)) - cost.step_time(decode(4))
    assert 0.003 * 1.7 < per_row < 0.003 * 2.1  # the recent speed's row cost, not the run's average drift


def test_steps_with_a_prompt_chunk_are_not_decode_rows():
    cost = DecodeRowCost(Fixed())
    cost.observe(StepShape(256, 1, 300, 1), 0.6)
    cost.observe(decode(1), 0.010)
    cost.observe(decode(3), 0.018)
    assert cost.step_time(decode(2)) == pytest.approx(0.014)
    assert cost.step_time(StepShape(64, 1, 100, 1)) == 1.0
