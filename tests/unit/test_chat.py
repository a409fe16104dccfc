"""The chat loop's turns: what stays in the conversation when a reply is stopped or fails."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from swarm.apps.chat import ChatSession
from swarm.errors import PeerUnavailable
from swarm.tokenizer import Message


class ScriptedModel:
    """Answers with `pieces`, then raises `then` (if any) instead of ending; records what it was asked."""

    def __init__(self, pieces: Sequence[str], then: BaseException | None = None) -> None:
        self.pieces, self.then = list(pieces), then
        self.asked: list[list[Message]] = []
        self.closed = 0

    def stream_chat(self, messages: Sequence[Message], max_tokens: int = 256, **options: Any) -> Iterator[str]:
        self.asked.append([dict(m) for m in messages])

        def pieces() -> Iterator[str]:
            try:
                yield from self.pieces
                if self.then is not None:
                    raise self.then
            finally:
                self.closed += 1

        return pieces()


def chat(model: ScriptedModel, typed: str) -> str:
    out = io.StringIO()
    ChatSession(model, 16, {}).run(io.StringIO(typed), out)  # type: ignore[arg-type]
    return out.getvalue()


def test_ctrl_c_stops_the_reply_and_keeps_what_it_said() -> None:
    model = ScriptedModel(["Once", " upon"], then=KeyboardInterrupt())
    screen = chat(model, "tell me\nand then?\n")
    assert "bot> Once upon (stopped)\n\nyou> " in screen
    assert model.closed == 2  # each generation was ended, the stopped one too
    assert model.asked[1] == [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "Once upon"},
                              {"role": "user", "content": "and then?"}]  # fmt: skip


def test_ctrl_c_before_any_text_drops_the_turn() -> None:
    model = ScriptedModel([], then=KeyboardInterrupt())
    screen = chat(model, "tell me\nagain\n")
    assert "bot>  (stopped)\n\nyou> " in screen
    assert model.asked[1] == [{"role": "user", "content": "again"}]


def test_a_failed_reply_drops_the_turn() -> None:
    model = ScriptedModel(["Once"], then=PeerUnavailable("node gone"))
    screen = chat(model, "tell me\nagain\n")
    assert "(error: node gone)" in screen
    assert model.asked[1] == [{"role": "user", "content": "again"}]


class CtrlCAtThePrompt:
    def readline(self) -> str:
        raise KeyboardInterrupt


def test_ctrl_c_at_the_prompt_quits() -> None:
    out = io.StringIO()
    ChatSession(ScriptedModel([]), 16, {}).run(CtrlCAtThePrompt(), out)  # type: ignore[arg-type]
    assert out.getvalue().endswith("you> \n")
