"""`swarm-client chat` driven through a real pseudo-terminal, as a person would use it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from swarm.package import ModelPackage
from tests.cluster import LocalCluster
from tests.conftest import REPO


class Terminal:
    def __init__(self, args: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, text: str, timeout_s: float = 30.0) -> str:
        """Read until `text` shows up after what was already read; return what came before it."""
        start = len(self.screen)
        deadline = time.monotonic() + timeout_s
        while text not in self.screen[start:]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {text!r}; screen so far:\n{self.screen[start:]}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    self.screen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the program exited
                    break
        assert text in self.screen[start:], self.screen[start:]
        return self.screen[start : self.screen.index(text, start)]

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=20)
        finally:
            os.close(self.master)


def test_chat_streams_resets_and_quits(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    term = Terminal([sys.executable, "-m", "swarm.cli", "chat", *peers, "--max-tokens", "30"])
    try:
        term.expect("you> ")
        term.type("Once upon a time")
        answer = term.expect("you> ")
        assert "there was a little girl named Lily" in answer
        term.type("/stats")
        assert "30 new" in term.expect("you> ")
        term.type("/reset")
        assert "conversation cleared" in term.expect("you> ")
        term.type("Once upon a time")
        again = term.expect("you> ")
        assert again == answer  # the same answer: the history was cleared
        term.type("Once upon a time")
        assert term.expect("you> ") != answer  # with history, the model sees the earlier turns
        term.type("/quit")
    finally:
        code = term.close()
    assert code == 0
