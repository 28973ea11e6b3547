"""The live engine under `max_step_ms`: its own fit of its step times drives the scheduler's chunking."""
from __future__ import annotations

import pytest

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import SamplingParams
from fleetserve.perf.model import StepShape


@pytest.mark.slow
def test_a_bounded_engine_chunks_prompts_and_gives_the_same_tokens(llm, chat_prompts):
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    llm.engine.kv_cache.reset_prefix_cache()
    expected = [r.token_ids for r in llm.generate(chat_prompts, greedy)]
    # No step of this model takes under a millisecond, so the prompts share one block's worth of tokens a step.
    bounded = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="64MiB", max_step_ms=1,
                  enable_prefix_caching=False)
    assert [r.token_ids for r in bounded.generate(chat_prompts, greedy)] == expected
    cost = bounded.engine.step_cost
    assert cost is not None and cost.num_observed >= sum(len(p) for p in chat_prompts) // 16 + 15
    assert cost.step_time(StepShape(0, 1, 100)) > 0.001


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_a_bound_that_is_not_positive_is_a_clear_error(command, capsys):
    from fleetserve.cli import main
    with pytest.raises(SystemExit):
        main([command, "--max-step-ms", "0"])
    assert "--max-step-ms: must be a positive" in capsys.readouterr().err


def test_a_bounded_engine_is_not_profiled(capsys):
    from fleetserve.cli import main
    assert main(["profile", "--max-step-ms", "100"]) == 2
    assert "cannot be profiled" in capsys.readouterr().err
