"""Chat templates and streaming detokenization."""

from __future__ import annotations

import json

import pytest

from swarm.errors import InvalidRequest
from swarm.package import TokenizerInfo
from swarm.tokenizer import StreamDecoder, TextCodec
from tests.conftest import GOLDEN, STORIES


def codec(folder, template: str | None = None) -> TextCodec:  # type: ignore[no-untyped-def]
    info = TokenizerInfo("tokenizer.json", "", "<s>", "</s>", 1, (2,), template)
    return TextCodec.from_file(folder / "tokenizer.json", info)


def test_chat_template_renders_the_conversation() -> None:
    template = json.loads((GOLDEN / "qwen2" / "tokenizer_config.json").read_text())["chat_template"]
    rendered = codec(GOLDEN / "qwen2", template).render_chat([{"role": "user", "content": "t5 t6"}])
    assert "t5 t6" in rendered and rendered != "t5 t6"


def test_no_template_joins_the_messages() -> None:
    c = codec(STORIES)
    messages = [{"role": "user", "content": "Once upon a time"}, {"role": "assistant", "content": "there was"}]
    assert c.render_chat(messages) == "Once upon a time\nthere was"
    assert c.encode_chat(messages) == c.encode("Once upon a time\nthere was")


def test_template_bos_is_not_doubled() -> None:
    c = codec(STORIES, "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ids = c.encode_chat([{"role": "user", "content": "Once upon a time"}])
    assert ids[0] == 1 and ids.count(1) == 1  # the template's BOS, and no second one from the tokenizer


def test_bad_messages_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        codec(STORIES).render_chat([{"role": "user"}])
    with pytest.raises(InvalidRequest, match="refused"):
        codec(STORIES, "{{ raise_exception('no system role') }}").render_chat([{"role": "user", "content": "x"}])


def test_template_cannot_reach_python() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(Exception, match=r"unsafe|not safely|access"):
        codec(STORIES, evil).render_chat([{"role": "user", "content": "x"}])


def test_stream_pieces_add_up_to_the_decoded_text() -> None:
    c = codec(STORIES)
    prompt = c.encode("Once upon a time")
    text = " there was a café 🙂 named Lily."
    ids = c.encode("Once upon a time" + text)[len(prompt) :]
    decoder = StreamDecoder(c, prompt)
    pieces = [decoder.push(t) for t in ids]
    assert "".join(pieces) == c.decode(prompt + ids)[len(c.decode(prompt)) :]
    assert all("\ufffd" not in p for p in pieces)  # split characters are held back, never shown broken
