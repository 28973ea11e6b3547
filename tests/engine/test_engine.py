"""The engine on the real default model: greedy agreement with transformers, and the same tokens through
prefix hits, chunked prefill and preemption; sampling options; streaming; aborts; bad input."""
from __future__ import annotations

import pytest
import torch

from fleetserve.engine.llm import LLM
from fleetserve.engine.sampling_params import InvalidRequestError, SamplingParams

GREEDY_32 = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_greedy(llm, chat_prompts):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(llm.engine.model_path), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # like ignore_eos: run on past EOS without masking it
    expected = []
    for prompt in chat_prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=0)
        expected.append(out[0, len(prompt):].tolist())
    return expected


def test_greedy_matches_transformers_alone(llm, chat_prompts, hf_greedy):
    for prompt, expected in zip(chat_prompts, hf_greedy):
        assert llm.generate([prompt], GREEDY_32)[0].token_ids == expected


@pytest.mark.slow
def test_greedy_matches_transformers_when_batched(llm, chat_prompts, hf_greedy):
    results = llm.generate(chat_prompts, GREEDY_32)
    assert [r.token_ids for r in results] == hf_greedy


@pytest.fixture(scope="module")
def plain_run(llm, chat_prompts):
    llm.engine.kv_cache.reset_prefix_cache()
    return [r.token_ids for r in llm.generate(chat_prompts, GREEDY_32)]


def test_prefix_cache_hit_gives_the_same_tokens(llm, chat_prompts, plain_run):
    hits_before = llm.engine.kv_cache.prefix_cache_hits
    again = llm.generate(chat_prompts, GREEDY_32)
    assert llm.engine.kv_cache.prefix_cache_hits > hits_before
    assert all(r.num_cached_tokens > 0 for r in again)
    assert [r.token_ids for r in again] == plain_run


@pytest.mark.slow
def test_chunked_prefill_gives_the_same_tokens(chat_prompts, plain_run):
    small = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory="64MiB", max_num_batched_tokens=7,
                enable_prefix_caching=False)
    assert [r.token_ids for r in small.generate(chat_prompts, GREEDY_32)] == plain_run


@pytest.mark.slow
def test_preemption_gives_the_same_tokens(chat_prompts, plain_run):
    longest = max(len(p) for p in chat_prompts) + 32
    block_bytes = 16 * 2 * 30 * 3 * 64 * 4
    tiny = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory=block_bytes * (-(-longest // 16) + 2),
               enable_prefix_caching=False)
    results = tiny.generate(chat_prompts, GREEDY_32)
    assert tiny.engine.scheduler.num_preemptions > 0
    assert [r.token_ids for r in results] == plain_run
    assert tiny.engine.kv_cache.num_free_blocks == tiny.engine.kv_cache.num_blocks


@pytest.mark.slow
def test_priority_preemption_gives_the_same_tokens_and_spares_the_urgent(chat_prompts, plain_run):
    from fleetserve.engine.scheduling_policy import SchedulingPolicy
    longest = max(len(p) for p in chat_prompts) + 32
    block_bytes = 16 * 2 * 30 * 3 * 64 * 4
    tiny = LLM(dtype="float32", kv_cache_dtype="float32", kv_cache_memory=block_bytes * (-(-longest // 16) + 2),
               enable_prefix_caching=False, scheduling=SchedulingPolicy("priority"))
    priorities = [1] * len(chat_prompts)
    priorities[-1] = -1  # the newest is urgent: under FCFS it would be the first victim
    preempted: list[str] = []
    scheduler = tiny.engine.scheduler
    original_preempt = scheduler._preempt

    def recording_preempt(request):
        preempted.append(request.sampling_params.priority)
        original_preempt(request)

    scheduler._preempt = recording_preempt  # observe the victims, nothing else changes
    results = tiny.generate(chat_prompts, GREEDY_32, priority=priorities)
    assert preempted and -1 not in preempted
    assert [r.token_ids for r in results] == plain_run


def test_seeded_sampling_is_reproducible_and_independent_of_the_batch(llm, chat_prompts):
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate([chat_prompts[1]], params)[0].token_ids
    batched = llm.generate(chat_prompts, params)[1].token_ids
    other_seed = llm.generate([chat_prompts[1]], SamplingParams(temperature=0.9, seed=99, max_tokens=24,
                                                                  ignore_eos=True))[0].token_ids
    assert alone == batched
    assert alone != other_seed


def test_top_k_one_is_greedy(llm, chat_prompts, plain_run):
    params = SamplingParams(temperature=1.0, top_k=1, seed=5, max_tokens=32, ignore_eos=True)
    assert llm.generate([chat_prompts[0]], params)[0].token_ids == plain_run[0]


def test_stop_string_ends_the_text_before_it(llm, chat_prompts, plain_run, tokenizer):
    full = tokenizer.decode(plain_run[0])
    stop = full[10:14]
    result = llm.generate([chat_prompts[0]], SamplingParams(temperature=0, max_tokens=32, stop=[stop]))[0]
    assert result.finish_reason == "stop"
    assert result.text == full[:full.index(stop)]


def test_stop_token_ids_and_max_tokens(llm, chat_prompts, plain_run):
    stop_token = plain_run[0][5]
    result = llm.generate([chat_prompts[0]], SamplingParams(temperature=0, max_tokens=32,
                                                            stop_token_ids=[stop_token]))[0]
    assert result.finish_reason == "stop" and result.token_ids[-1] == stop_token
    result = llm.generate([chat_prompts[0]], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))[0]
    assert result.finish_reason == "length" and len(result.token_ids) == 3


def test_eos_ends_a_request_unless_ignored(llm, chat_prompts):
    result = llm.generate([chat_prompts[0]], SamplingParams(temperature=0, max_tokens=200))[0]
    assert result.finish_reason == "stop" and result.token_ids[-1] in llm.engine.eos_token_ids


def test_logprobs_of_chosen_tokens(llm, chat_prompts):
    result = llm.generate([chat_prompts[0]], SamplingParams(temperature=0, max_tokens=5, logprobs=3))[0]
    assert [lp.token_id for lp in result.logprobs] == result.token_ids
    for lp in result.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3 and lp.top[0][0] == lp.token_id


def test_streaming_deltas_add_up_to_the_text(llm, chat_prompts):
    params = SamplingParams(temperature=0, max_tokens=20)
    deltas = list(llm.generate_stream(chat_prompts[2], params))
    assert deltas[-1].finished
    assert "".join(d.new_text for d in deltas) == deltas[-1].text
    assert sum(len(d.new_token_ids) for d in deltas) == len(deltas[-1].token_ids)


def test_multibyte_characters_are_never_split(llm, tokenizer):
    message = {"role": "user", "content": "Répète: 日本語のテキスト 🙂🙂 ça va? Écris en français."}
    prompt = tokenizer.encode_chat([message])
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=40)
    deltas = list(llm.generate_stream(prompt, params))
    assert all("\ufffd" not in d.new_text for d in deltas)
    assert "".join(d.new_text for d in deltas) == deltas[-1].text


def test_abort_frees_blocks_at_once(llm, chat_prompts):
    engine = llm.engine
    free_before = engine.kv_cache.num_free_blocks
    running = engine.add_request(chat_prompts[0], SamplingParams(max_tokens=100))
    waiting = engine.add_request(chat_prompts[1], SamplingParams(max_tokens=100))
    engine.step()
    outs = engine.abort_request([running, waiting])
    assert {o.finish_reason for o in outs} == {"abort"}
    assert not engine.has_unfinished_requests()
    assert engine.kv_cache.num_free_blocks == free_before


@pytest.mark.parametrize("prompt, params, field", [
    ("", SamplingParams(), "prompt"),
    ([1] * 9000, SamplingParams(max_tokens=1), "prompt"),
    ("hello", SamplingParams(max_tokens=8192), "max_tokens"),
    ([10**7], SamplingParams(), "prompt"),
])
def test_bad_requests_are_refused_and_others_keep_running(llm, chat_prompts, plain_run, prompt, params, field):
    good = llm.engine.add_request(chat_prompts[0], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    with pytest.raises(InvalidRequestError) as error:
        llm.engine.add_request(prompt, params)
    assert error.value.param == field
    tokens = []
    while llm.engine.has_unfinished_requests():
        tokens += [t for o in llm.engine.step() if o.request_id == good for t in o.new_token_ids]
    assert tokens == plain_run[0]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=-3), "max_tokens"),
    (dict(temperature=-0.5), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-7), "top_k"),
])
def test_bad_sampling_params_name_the_value(kwargs, needle):
    with pytest.raises(InvalidRequestError) as error:
        SamplingParams(**kwargs)
    assert needle in str(error.value) and str(list(kwargs.values())[0]) in str(error.value)


def test_unknown_model_path_is_a_clear_error(tmp_path):
    from fleetserve.model.loader import ModelNotFoundError
    missing = str(tmp_path / "no-such-model.gguf")
    with pytest.raises(ModelNotFoundError, match="no-such-model.gguf"):
        LLM(model=missing)


def test_hub_name_offline_fails_at_once_with_advice(monkeypatch):
    from fleetserve.model.loader import ModelNotFoundError
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="--model"):
        LLM(model="some-org/some-model")
