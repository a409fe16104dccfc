"""Fitting a chat into the context: the oldest whole turns go, the system prompt and the newest stay."""

from __future__ import annotations

import pytest

from swarm.conversation import fit_conversation
from swarm.errors import InvalidRequest
from swarm.package import TokenizerInfo
from swarm.tokenizer import Message, TextCodec
from tests.conftest import STORIES

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    info = TokenizerInfo("tokenizer.json", "", None, None, None, (), TEMPLATE)
    return TextCodec.from_file(STORIES / "tokenizer.json", info)


def conversation(turns: int) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": "You are a storyteller."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Tell me story number {i} about a dog and a cat."})
        messages.append({"role": "assistant", "content": "Once upon a time there was a dog. " * 3})
    messages.append({"role": "user", "content": "And now one about a bird."})
    return messages


def test_everything_is_sent_when_it_fits(codec: TextCodec) -> None:
    messages = conversation(2)
    fitted = fit_conversation(codec, messages, context=4096, max_tokens=50)
    assert (fitted.dropped, fitted.sent, fitted.max_tokens) == (0, len(messages), 50)
    assert fitted.prompt_ids == codec.encode_chat(messages) and fitted.note() == ""


def test_the_oldest_turns_go_first_and_whole(codec: TextCodec) -> None:
    messages = conversation(6)
    whole = len(codec.encode_chat(messages))
    fitted = fit_conversation(codec, messages, context=whole, max_tokens=60)
    assert fitted.dropped % 2 == 0 and fitted.dropped > 0  # a user message and its answer together
    kept = [messages[0], *messages[1 + fitted.dropped :]]
    assert fitted.prompt_ids == codec.encode_chat(kept)  # the system prompt stays, the newest turns stay
    assert len(fitted.prompt_ids) + 60 <= whole
    # and no more is left out than needed: one more turn would not have fitted
    longer = [messages[0], *messages[fitted.dropped - 1 :]]
    assert len(codec.encode_chat(longer)) + 60 > whole
    assert fitted.note() == f"{fitted.dropped} oldest messages left out to fit the context"


def test_a_reply_shrinks_before_the_newest_message_is_refused(codec: TextCodec) -> None:
    newest = [{"role": "user", "content": "Tell me a story about a dog and a cat. " * 3}]
    size = len(codec.encode_chat(newest))
    fitted = fit_conversation(codec, newest, context=size + 5, max_tokens=100)
    assert fitted.max_tokens == 5
    with pytest.raises(InvalidRequest, match="newest message needs"):
        fit_conversation(codec, newest, context=size, max_tokens=100)


def test_no_max_tokens_runs_to_the_end_of_the_context(codec: TextCodec) -> None:
    messages = conversation(1)
    size = len(codec.encode_chat(messages))
    fitted = fit_conversation(codec, messages, context=size + 1000, max_tokens=None)
    assert fitted.dropped == 0 and fitted.max_tokens == 1000
    # a long history still leaves a reply some room: older turns go until a quarter of the context is free
    long = conversation(8)
    fitted = fit_conversation(codec, long, context=len(codec.encode_chat(long)) + 10, max_tokens=None)
    assert fitted.dropped > 0 and fitted.max_tokens >= (len(codec.encode_chat(long)) + 10) // 4
