"""The terminal chat loop behind `swarm-client chat`: streams replies, keeps the conversation."""

from __future__ import annotations

from typing import Any, TextIO

from swarm.console import TextSink
from swarm.errors import SwarmError
from swarm.generation import GenerationStats
from swarm.textgen import SyncTextGenerator
from swarm.tokenizer import Message

HELP = ("commands: /stats (last reply's timings), /reset (forget the conversation), /quit; "
        "Ctrl-C stops a reply (what it said so far stays in the conversation), and at the prompt quits")


class ChatSession:
    def __init__(self, model: SyncTextGenerator, max_tokens: int, sampling: dict[str, Any]) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.messages: list[Message] = []
        self.last_stats: GenerationStats | None = None

    def run(self, stdin: TextIO, stdout: TextSink) -> None:
        stdout.write(f"swarm chat — {HELP}\n")
        while True:
            try:
                stdout.write("\nyou> ")  # inside: from the moment the prompt shows, Ctrl-C quits
                stdout.flush()
                line = stdin.readline()
            except KeyboardInterrupt:  # Ctrl-C at the prompt quits, as /quit does
                line = ""
            if not line:  # end of input
                stdout.write("\n")
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text, stdout):
                    return
                continue
            self.reply(text, stdout)

    def command(self, text: str, stdout: TextSink) -> bool:
        """Handle a /command; False means quit."""
        name = text.split()[0].lower()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.messages.clear()
            stdout.write("(conversation cleared)\n")
        elif name == "/stats":
            stdout.write((self.last_stats.summary() if self.last_stats else "(no reply yet)") + "\n")
        else:
            stdout.write(f"unknown command {name}; {HELP}\n")
        return True

    def reply(self, text: str, stdout: TextSink) -> None:
        self.messages.append({"role": "user", "content": text})
        stats = GenerationStats()
        pieces: list[str] = []
        stream = self.model.stream_chat(self.messages, self.max_tokens, stats=stats, **self.sampling)
        try:
            stdout.write("bot> ")  # inside: a Ctrl-C from here on stops this reply
            for piece in stream:
                pieces.append(piece)
                stdout.write(piece)
                stdout.flush()
        except SwarmError as exc:
            self.messages.pop()  # the turn did not happen; the user can send it again
            stdout.write(f"\n(error: {exc})\n")
            return
        except KeyboardInterrupt:  # Ctrl-C stops this reply only: back to the prompt
            stdout.write(" (stopped)")
            if not pieces:  # nothing was said: as if the turn never happened
                self.messages.pop()
                stdout.write("\n")
                return
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # ends the generation and frees its session, wherever the Ctrl-C landed
        stdout.write("\n")
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
        self.last_stats = stats
