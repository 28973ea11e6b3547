"""What the router reads from a request body before routing it (no processes)."""
from __future__ import annotations

import pytest

from fleetserve.fleet.request_info import describe_call
from fleetserve.wire.block_hashes import chain_block_hashes
from fleetserve.wire.errors import APIError


class FakeTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        text += "<assistant>" if add_generation_prompt else ""
        return self.encode(text)


def test_token_id_prompts_hash_exactly_like_the_replicas():
    ids = list(range(100, 140))
    call = describe_call("completions", f'{{"prompt": {ids}, "max_tokens": 7, "n": 2}}'.encode(), None, 256, None)
    assert call.prompt_tokens == 40 and call.max_output_tokens == 14
    assert call.block_hashes(16) == tuple(chain_block_hashes(ids, 16))
    assert len(call.block_hashes(8)) == 5


def test_chat_prompts_go_through_the_chat_template_as_the_replica_renders_them():
    body = b'{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, ' \
           b'{"type": "text", "text": "b"}]}, {"role": "user", "content": "hi"}], "user": "u1"}'
    call = describe_call("chat", body, FakeTokenizer(), 256, None)
    assert call.prompt_token_ids == FakeTokenizer().encode("<system>a\nb<user>hi<assistant>")
    assert call.max_output_tokens == 256 and call.session_key == "u1"
    assert describe_call("chat", body, FakeTokenizer(), 256, "s9").session_key == "s9"


def test_without_a_tokenizer_lengths_are_estimated_and_hashes_still_stable():
    call = describe_call("completions", b'{"prompt": "' + b"x" * 400 + b'"}', None, 256, None)
    assert call.prompt_tokens == 100 and call.max_output_tokens == 16  # OpenAI's completions default
    again = describe_call("completions", b'{"prompt": "' + b"x" * 400 + b'"}', None, 256, None)
    assert call.block_hashes(16) == again.block_hashes(16) and len(call.block_hashes(16)) == 6


def test_several_prompts_count_every_prompt_but_hash_the_first():
    call = describe_call("completions", b'{"prompt": [[1, 2, 3], [4, 5]]}', None, 256, None)
    assert call.prompt_tokens == 5 and call.prompt_token_ids == [1, 2, 3]


def test_bad_bodies_raise_openai_400s():
    with pytest.raises(APIError) as error:
        describe_call("chat", b'{"messages": "hi"}', None, 256, None)
    assert error.value.status == 400 and error.value.param == "messages"
