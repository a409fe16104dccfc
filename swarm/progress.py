"""A one-line progress bar on stderr, for long work (exports, downloads, a node joining).

It draws only on a terminal: piped into a file or another program it writes nothing, so logs
and scripts never see carriage returns and half-drawn bars.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[str, int, int], None]  # (what, done, total)


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False, width: int = 30) -> None:
        self._stream = stream or sys.stderr
        self._quiet, self._width = quiet or not _is_terminal(self._stream), width
        self._started = time.monotonic()

    def __call__(self, what: str, done: int, total: int) -> None:
        if self._quiet:
            return
        filled = self._width * done // max(total, 1)
        bar = "#" * filled + "-" * (self._width - filled)
        end = "\n" if done >= total else ""
        elapsed = time.monotonic() - self._started
        self._stream.write(f"\r[{bar}] {_amount(done, total)} {what:<24.24} {elapsed:6.1f}s{end}")
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _amount(done: int, total: int) -> str:
    if total >= 1 << 20:  # bytes: show MiB
        return f"{done / 2**20:7.1f}/{total / 2**20:.1f} MiB"
    return f"{done}/{total}"
