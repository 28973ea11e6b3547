"""The stop rule in one place: `Request.tokens_before_length_stop` for the length stop (max_tokens, never
before min_tokens, and the context length), `check_stop_after_token` for it and the token stops."""
from __future__ import annotations

from fleetserve.engine.request import Request, RequestStatus
from fleetserve.engine.sampling_params import SamplingParams

EOS = 2


def request(max_tokens: int | None = 8, min_tokens: int = 0, ignore_eos: bool = False,
            stop_token_ids: list[int] | None = None) -> Request:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, min_tokens=min_tokens, ignore_eos=ignore_eos,
                            stop_token_ids=stop_token_ids or [])
    return Request("r", list(range(10, 20)), params, eos_token_ids=frozenset({EOS}))


def sample(r: Request, token: int, max_model_len: int = 100) -> bool:
    r.output_token_ids.append(token)
    return r.check_stop_after_token(max_model_len)


def test_the_length_stop_comes_at_max_tokens_or_the_context_length_whichever_is_first():
    r = request(max_tokens=8)
    assert r.tokens_before_length_stop(max_model_len=100) == 8
    assert r.tokens_before_length_stop(max_model_len=15) == 5
    assert not any(sample(r, 5, max_model_len=15) for _ in range(4))
    assert r.tokens_before_length_stop(max_model_len=15) == 1
    assert sample(r, 5, max_model_len=15) and r.status is RequestStatus.FINISHED_LENGTH
    assert r.tokens_before_length_stop(max_model_len=15) == 0


def test_min_tokens_defers_the_end_of_sequence_and_max_tokens_but_not_the_context_length():
    r = request(max_tokens=2, min_tokens=4)
    assert r.tokens_before_length_stop(max_model_len=100) == 4
    assert not sample(r, EOS) and not sample(r, EOS) and not sample(r, 5)
    assert sample(r, 5) and r.status is RequestStatus.FINISHED_LENGTH
    short = request(max_tokens=8, min_tokens=4)
    assert sample(short, 5, max_model_len=11) and short.status is RequestStatus.FINISHED_LENGTH


def test_token_stops_finish_as_stopped_and_say_which_token():
    eos = request()
    assert sample(eos, EOS) and eos.status is RequestStatus.FINISHED_STOPPED and eos.stop_reason is None
    stop = request(stop_token_ids=[7])
    assert not sample(stop, 5) and sample(stop, 7)
    assert stop.status is RequestStatus.FINISHED_STOPPED and stop.stop_reason == 7
    ignored = request(ignore_eos=True)
    assert not sample(ignored, EOS)
    # a token stop on the last allowed token is still a stop, not a length stop
    last = request(max_tokens=1)
    assert sample(last, EOS) and last.status is RequestStatus.FINISHED_STOPPED
