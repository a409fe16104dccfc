"""Fitting a conversation into the model's context: the oldest turns go first.

A chat keeps every message; each turn sends as much of it as fits. System messages at the start
stay, and so does the newest message; the oldest of the others are left out, a user message
together with the assistant's answer to it, so the roles still alternate as chat templates
expect. Only when the newest message alone leaves no room for a reply is the turn refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from swarm.errors import InvalidRequest
from swarm.tokenizer import Message, TextCodec

# with no max tokens asked for, a turn still keeps this much room for its reply (or a quarter
# of a small context) before it runs to the end of the context
DEFAULT_REPLY_ROOM = 512


@dataclass(frozen=True)
class FittedConversation:
    prompt_ids: list[int]
    max_tokens: int  # new tokens this turn may have
    sent: int  # messages rendered into the prompt
    dropped: int  # oldest messages left out to fit

    def note(self) -> str:
        """What `/stats` says about the fit; empty when everything was sent."""
        if not self.dropped:
            return ""
        return f"{self.dropped} oldest message{'s' if self.dropped > 1 else ''} left out to fit the context"


def _leading_system(messages: Sequence[Message]) -> int:
    count = 0
    while count < len(messages) and messages[count].get("role") == "system":
        count += 1
    return count


def _cuts(messages: Sequence[Message]) -> list[int]:
    """How many of the oldest non-system messages may be left out, fewest first: whole turns
    (a user message and what follows it up to the next user message), never the newest message."""
    head = _leading_system(messages)
    starts = [i for i in range(head + 1, len(messages)) if messages[i].get("role") == "user"]
    return [0] + [s - head for s in starts]


def fit_conversation(
    codec: TextCodec, messages: Sequence[Message], context: int, max_tokens: int | None
) -> FittedConversation:
    """The longest recent part of `messages` whose prompt leaves room for `max_tokens` new tokens
    (None: the rest of the context, at least DEFAULT_REPLY_ROOM if older turns can make room)."""
    if not messages:
        raise InvalidRequest("a chat needs at least one message")
    head = _leading_system(messages)
    want = max_tokens if max_tokens is not None else min(DEFAULT_REPLY_ROOM, max(1, context // 4))
    best: list[int] | None = None
    dropped = 0
    for cut in _cuts(messages):
        kept = list(messages[:head]) + list(messages[head + cut :])
        ids = codec.encode_chat(kept)
        best, dropped = ids, cut
        if len(ids) + want <= context:
            break
    assert best is not None
    room = context - len(best)
    if room < 1:
        raise InvalidRequest(
            f"the newest message needs {len(best)} tokens with the chat template, the whole context of "
            f"{context} tokens; shorten it"
        )
    allowed = room if max_tokens is None else min(max_tokens, room)
    return FittedConversation(best, allowed, len(messages) - dropped, dropped)
