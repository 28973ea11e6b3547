"""The router hashes chat prompts in the form the replica renders them for the chat template; both go
through fleetserve.wire.messages, from their own request models."""
from __future__ import annotations

from typing import Any

import pytest

from fleetserve.api.protocol import ChatMessage
from fleetserve.fleet.request_info import RoutedMessage
from fleetserve.wire.messages import template_message, template_messages

MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
    {"role": "assistant", "content": None},
    {"role": "user", "content": ""},
]


def test_text_parts_join_with_newlines_and_developer_reads_as_system():
    assert template_messages(MESSAGES) == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "one\ntwo"},
                                           {"role": "assistant", "content": ""},
                                           {"role": "user", "content": ""}]


@pytest.mark.parametrize("message", MESSAGES)
def test_the_replica_and_the_router_render_a_message_alike(message):
    replica = ChatMessage.model_validate(message).model_dump(include={"role", "content"})
    routed = RoutedMessage.model_validate(message)
    assert template_messages([replica]) == [template_message(routed.role, routed.content)]
