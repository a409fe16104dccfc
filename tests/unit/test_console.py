"""What the CLIs share about the terminal: --version, and log lines beside a streamed answer."""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata

import pytest

from swarm.console import ConsoleHandler, StreamedText, configure_console_logging
from tests.conftest import REPO


@pytest.mark.parametrize("program, module", [("swarm-node", "node.cli"), ("swarm-client", "swarm.apps.cli"),
                                             ("swarm-export", "export.cli")])  # fmt: skip
def test_every_cli_says_its_version(program: str, module: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{program} {metadata.version('swarm-llm')}\n"


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_warning_starts_on_its_own_line_while_an_answer_streams(root_logging: None) -> None:
    screen = io.StringIO()  # stdout and stderr on one terminal
    text = StreamedText(screen)
    configure_console_logging("swarm-client", text, screen)
    log = logging.getLogger("swarm.recovery")
    text.write('"I will find it."')
    log.warning("route failed at %s; rerouting", "n1")
    log.warning("again")  # the line is closed already: no blank line
    text.write(" She looked")
    text.write(" everywhere.\n")
    log.warning("done")  # after a whole line: nothing to add
    assert screen.getvalue().splitlines() == [
        '"I will find it."',
        "swarm-client: warning: route failed at n1; rerouting",
        "swarm-client: warning: again",
        " She looked everywhere.",
        "swarm-client: warning: done",
    ]


def test_a_redirected_answer_is_left_as_it_was(root_logging: None) -> None:
    answer, errors = io.StringIO(), io.StringIO()  # `swarm-client generate ... > story.txt`
    text = StreamedText(answer)
    logging.getLogger().handlers[:] = [ConsoleHandler("swarm-client", text, errors)]
    text.write("Once upon")
    logging.getLogger("swarm").error("trouble")
    text.write(" a time\n")
    assert answer.getvalue() == "Once upon a time\n"
    assert errors.getvalue() == "swarm-client: error: trouble\n"


def _read_pty(master: int, at_least: int, timeout: float = 5.0) -> str:
    """What the terminal shows, read until `at_least` characters arrived: one
    os.read may return only what the line discipline had passed on so far."""
    shown = b""
    deadline = time.monotonic() + timeout
    while len(shown.replace(b"\r\n", b"\n")) < at_least and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            shown += os.read(master, 4096)
    return shown.decode()


def test_one_terminal_on_two_descriptors_is_one_screen(root_logging: None) -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as out, open(os.dup(slave), "w") as err:
            text = StreamedText(out)
            logging.getLogger().handlers[:] = [ConsoleHandler("swarm-client", text, err)]
            text.write("piece")
            logging.getLogger("swarm").warning("rerouting")
            out.flush()
        expected = "piece\nswarm-client: warning: rerouting\n"
        assert _read_pty(master, len(expected)).replace("\r\n", "\n") == expected
    finally:
        os.close(master)
        os.close(slave)
