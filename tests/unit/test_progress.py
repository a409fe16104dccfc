"""Progress bars draw on a terminal and stay silent anywhere else."""

from __future__ import annotations

import io
import os
import select

from swarm.progress import ProgressLine


def read_all(fd: int) -> bytes:
    """Everything written to the terminal so far (a pty hands it out in pieces)."""
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        data += os.read(fd, 4096)
    return data


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()  # a pipe or a file: isatty() is False
    progress = ProgressLine(stream)
    progress("block_000.onnx", 1, 3)
    progress("done", 3, 3)
    assert stream.getvalue() == ""


def test_draws_on_a_terminal() -> None:
    main, tty = os.openpty()
    try:
        with open(tty, "w", closefd=False) as stream:
            assert stream.isatty()
            progress = ProgressLine(stream)
            progress("block_000.onnx", 1, 3)
            progress("done", 3, 3)
        written = read_all(main).decode()
    finally:
        os.close(main)
        os.close(tty)
    assert "\r[" in written and "1/3" in written and "3/3" in written and "block_000.onnx" in written


def test_quiet_wins_over_a_terminal() -> None:
    main, tty = os.openpty()
    try:
        with open(tty, "w", closefd=False) as stream:
            ProgressLine(stream, quiet=True)("done", 1, 1)
        written = read_all(main)
    finally:
        os.close(main)
        os.close(tty)
    assert written == b""


def test_closed_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    stream.close()
    ProgressLine(stream)("done", 1, 1)  # no error: a closed stream draws nothing
