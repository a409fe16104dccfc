"""Text <-> token ids with the package's tokenizer.json, chat templates, streaming decode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from swarm.errors import InvalidRequest
from swarm.package import TokenizerInfo

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


class TextCodec:
    def __init__(self, tokenizer: Tokenizer, info: TokenizerInfo) -> None:
        self.info = info
        self._tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: Path, info: TokenizerInfo) -> TextCodec:
        return cls(Tokenizer.from_file(str(path)), info)

    @classmethod
    def from_json(cls, text: str, info: TokenizerInfo) -> TextCodec:
        return cls(Tokenizer.from_str(text), info)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the special tokens (BOS) the tokenizer adds by itself."""
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The prompt for a conversation: the model's chat template, or a plain fallback."""
        for m in messages:
            if set(m) - {"role", "content"} or not isinstance(m.get("content"), str):
                raise InvalidRequest(f"a chat message needs a role and text content, got {m!r}")
        if self.info.chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            template = env.from_string(self.info.chat_template)
            extra: dict[str, Any] = {
                "bos_token": self.info.bos_token or "",
                "eos_token": self.info.eos_token or "",
            }
            return template.render(messages=list(messages), add_generation_prompt=True, **extra)
        # no template (base models such as TinyStories): the conversation as plain text
        return "\n".join(m["content"] for m in messages)

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        text = self.render_chat(messages)
        if self.info.chat_template and self.info.bos_token and text.startswith(self.info.bos_token):
            # the template wrote BOS already; don't let the tokenizer add a second one
            return list(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return self.encode(text)


def _raise_template_error(message: str) -> None:
    raise InvalidRequest(f"chat template refused the conversation: {message}")


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 characters."""

    def __init__(self, codec: TextCodec, prompt_ids: Sequence[int] = ()) -> None:
        self._codec = codec
        # decoding from the end of the prompt keeps leading-space handling as in the full text
        self._ids: list[int] = list(prompt_ids[-1:])
        self._emitted = len(codec.decode(self._ids))

    def push(self, token: int) -> str:
        self._ids.append(token)
        text = self._codec.decode(self._ids)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return ""
        piece, self._emitted = text[self._emitted :], len(text)
        return piece
