"""What the command lines share about the terminal: process defaults set before gRPC starts,
`--version`, and log lines that never begin in the middle of a streamed answer."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import MutableMapping
from importlib import metadata
from typing import Protocol, TextIO

DISTRIBUTION = "swarm-llm"


def prepare_process(environ: MutableMapping[str, str] = os.environ) -> None:
    """A CLI's process defaults; first thing in its `main`, before anything imports grpc.

    gRPC's C core logs on its own to stderr (GOAWAY, reconnects, keepalive throttling), in its own
    format and over a chat prompt; the CLIs say what matters in their own words. gRPC reads
    GRPC_VERBOSITY once, when it is first imported, which is why the CLI modules import it only
    inside their commands. A user who sets the variable (to debug, say) keeps their value."""
    environ.setdefault("GRPC_VERBOSITY", "NONE")


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def add_version_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")


class TextSink(Protocol):
    """Where text goes: a file such as sys.stdout, or a StreamedText over one."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class StreamedText:
    """The stream an answer is written to as it arrives, knowing whether its last line is open."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._line_open = False
        self._lock = threading.Lock()  # log lines come from the SDK's loop thread

    def write(self, text: str) -> int:
        with self._lock:
            written = self.out.write(text)
            if text:
                self._line_open = not text.endswith("\n")
            return written

    def flush(self) -> None:
        self.out.flush()

    def end_line_before(self, other: TextIO) -> None:
        """`other` is about to get a line: if it shows on the same screen (or file) as an open
        line of this text, start it on a line of its own. The text itself is left as it was."""
        with self._lock:
            if self._line_open and _same_file(self.out, other):
                self.out.flush()
                other.write("\n")
                self._line_open = False


def _same_file(a: TextIO, b: TextIO) -> bool:
    if a is b:
        return True
    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError, AttributeError):  # not backed by a file descriptor
        return False


class _PersonFormatter(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"
        return line + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """`swarm-client: warning: ...` lines for a person, each on a line of its own even while an
    answer streams onto the same terminal."""

    def __init__(self, prog: str, text: StreamedText, stream: TextIO) -> None:
        super().__init__(stream)
        self.text = text
        self.setFormatter(_PersonFormatter(prog))

    def emit(self, record: logging.LogRecord) -> None:
        self.text.end_line_before(self.stream)
        super().emit(record)


def configure_console_logging(prog: str, text: StreamedText, stream: TextIO, level: int = logging.WARNING) -> None:
    """Send this process's logs to `stream` for a person to read (replacing any handler)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(ConsoleHandler(prog, text, stream))
    root.setLevel(level)
