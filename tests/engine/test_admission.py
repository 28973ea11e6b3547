"""The admission checks that the live engine and the simulated replica share: each refusal, its HTTP status,
the field it names, and a message that says what was wrong and what to do."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fleetserve.engine.admission import Refusal, RequestRefused, admission_refusal, kv_cache_refusal


def test_a_prompt_that_fills_the_context_is_refused_naming_the_prompt():
    refusal = admission_refusal(2048, 1, max_model_len=2048)
    assert refusal == Refusal(400, "prompt", "the prompt has 2048 tokens but the model's context is 2048 tokens",
                              "shorten the prompt")
    assert refusal.error_kind == "http_status_400"
    assert refusal.message == "the prompt has 2048 tokens but the model's context is 2048 tokens; shorten the prompt"


def test_prompt_plus_max_tokens_beyond_the_context_is_refused_naming_max_tokens():
    refusal = admission_refusal(1000, 1049, max_model_len=2048)
    assert refusal is not None and refusal.status == 400 and refusal.param == "max_tokens"
    assert refusal.message == ("the prompt (1000 tokens) plus max_tokens (1049) is 2049 tokens, beyond the model's "
                               "context of 2048; lower max_tokens or shorten the prompt")


def test_exactly_the_context_fits_and_no_max_tokens_leaves_the_output_to_fill_it():
    assert admission_refusal(1000, 1048, max_model_len=2048) is None
    assert admission_refusal(2047, None, max_model_len=2048) is None


def test_a_full_queue_is_a_429_that_names_the_limit():
    assert admission_refusal(10, 10, 2048, num_waiting=1023, max_queue=1024) is None
    refusal = admission_refusal(10, 10, 2048, num_waiting=1024, max_queue=1024)
    assert refusal is not None and refusal.status == 429 and refusal.param is None
    assert refusal.error_kind == "http_status_429"
    assert refusal.reason == "1024 requests are already waiting (max_queue 1024)"
    assert refusal.advice


def test_a_request_that_never_fits_is_refused_before_the_queue_is_looked_at():
    refusal = admission_refusal(4096, 10, 2048, num_waiting=5000, max_queue=1)
    assert refusal is not None and refusal.status == 400


def test_without_a_queue_limit_only_lengths_are_checked():
    assert admission_refusal(10, 10, 2048, num_waiting=10**6) is None


def test_more_blocks_than_the_whole_cache_is_refused_naming_max_tokens():
    assert kv_cache_refusal(100, 28, blocks_needed=8, num_blocks=8) is None
    refusal = kv_cache_refusal(3000, 100, blocks_needed=194, num_blocks=128)
    assert refusal is not None and refusal.status == 400 and refusal.param == "max_tokens"
    assert refusal.message == ("the prompt (3000 tokens) plus max_tokens (100) needs 194 KV blocks but the whole "
                               "cache has 128; lower max_tokens, shorten the prompt or give the KV cache more memory")
    error = RequestRefused(refusal)
    assert isinstance(error, ValueError) and str(error) == refusal.message and error.refusal is refusal


@pytest.mark.parametrize("module", ["fleetserve.engine.admission", "fleetserve.engine.scheduler"])
def test_the_admission_checks_import_no_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"importing {module} imported torch"
