import math

import pytest

from fleetserve.engine.online_step_cost import COLD_START, OnlineStepCost
from fleetserve.perf.model import StepShape


def linear(const: float, prefill: float, decode: float, context: float):
    def seconds(shape: StepShape) -> float:
        return const + prefill * shape.prefill_tokens + decode * shape.decode_seqs + context * shape.context_tokens
    return seconds


def mixed_steps(count: int) -> list[StepShape]:
    shapes = []
    for index in range(count):
        decodes = 1 + index % 13
        chunk = (index * 37) % 300 if index % 3 else 0
        context = decodes * (50 + (index * 91) % 900) + chunk
        shapes.append(StepShape(chunk, decodes, context, 1 if chunk else 0))
    return shapes


def test_before_any_step_it_predicts_the_cold_start():
    cost = OnlineStepCost()
    assert cost.step_time(StepShape(512, 0, 512, 1)) == pytest.approx(COLD_START[0] + 512 * COLD_START[1]
                                                                       + 512 * COLD_START[3])


def test_it_learns_the_engine_step_times():
    truth = linear(0.008, 4e-4, 1.5e-3, 2e-6)
    cost = OnlineStepCost()
    for shape in mixed_steps(300):
        cost.observe(shape, truth(shape))
    for shape in (StepShape(256, 8, 8 * 600 + 256, 1), StepShape(0, 1, 100), StepShape(64, 32, 32 * 900 + 64, 1)):
        assert cost.step_time(shape) == pytest.approx(truth(shape), rel=0.03)


def test_it_follows_a_machine_that_gets_faster():
    cost = OnlineStepCost()
    for shape in mixed_steps(300):
        cost.observe(shape, linear(0.02, 2e-3, 4e-3, 4e-6)(shape))
    faster = linear(0.005, 5e-4, 1e-3, 1e-6)
    for shape in mixed_steps(1500):
        cost.observe(shape, faster(shape))
    assert cost.step_time(StepShape(256, 8, 5000, 1)) == pytest.approx(faster(StepShape(256, 8, 5000, 1)), rel=0.05)


def test_prompt_tokens_keep_their_cold_start_price_until_a_prompt_is_seen():
    cost = OnlineStepCost()
    for seqs in range(1, 40):
        cost.observe(StepShape(0, seqs, seqs * 300), 0.01 + 1e-3 * seqs)
    assert cost.coefficients["prefill_tokens"] == pytest.approx(COLD_START[1], rel=0.05)
    assert all(value >= 0 for value in cost.coefficients.values())


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_an_impossible_measurement_is_refused(seconds):
    with pytest.raises(ValueError, match="cannot take"):
        OnlineStepCost().observe(StepShape(0, 1, 10), seconds)
