"""Every command in README.md runs as written, in order, in a fresh folder beside ../shared.

The README's code blocks are read, not copied: a command added to the README is run here too
(a command this harness does not know how to drive fails the test). Long-running commands
(nodes, the HTTP server, `chat`, `status --watch`) run in the background or are fed input;
everything started in a section stops when the next section begins. mDNS stays on loopback
through $SWARM_MDNS_INTERFACES, the README's documented switch, and keys and caches live in a
temporary home. `scripts/test` is the one command not run here: CI runs it (.ci/run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_MODELS

FIXED_PORTS = (7001, 7002, 8000, 9100)
START_TIMEOUT_S = 90.0


@dataclass
class Block:
    section: str
    language: str
    code: str
    not_run: bool = False  # marked `<!-- not run: why -->` on the line before its fence


def readme_blocks(text: str) -> list[Block]:
    blocks, section, fence, lines, previous, marked = [], "", "", [], "", False
    for line in text.splitlines():
        if fence:
            if line.startswith("```"):
                blocks.append(Block(section, fence, "\n".join(lines), marked))
                fence, lines = "", []
            else:
                lines.append(line)
        elif line.startswith("```"):
            fence = line[3:].strip() or "text"
            marked = previous.strip().startswith("<!-- not run:")
        elif line.startswith("#"):
            section = line.lstrip("#").strip()
        previous = line
    return [b for b in blocks if b.language in ("bash", "python") and not b.not_run]


def bash_commands(code: str) -> list[str]:
    """Logical lines: continuation lines joined, blank lines dropped."""
    return [c.strip() for c in code.replace("\\\n", " ").splitlines() if c.strip()]


@dataclass
class Tour:
    cwd: Path
    env: dict[str, str]
    background: list[subprocess.Popen[str]] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def run(self, command: str, stdin: str = "", timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["bash", "-c", command], cwd=self.cwd, env=self.env, input=stdin, text=True,
                              capture_output=True, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        self.ran.append(command)
        return done

    def start(self, command: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        self.background.append(proc)
        self.ran.append(command)
        return proc

    def node(self, command: str) -> None:
        proc = self.start(command)
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("serving "):
                return
            if not line and proc.poll() is not None:
                break
        raise AssertionError(f"README node did not start: {command}\n{proc.stderr.read() if proc.stderr else ''}")

    def server(self, command: str) -> None:
        self.start(command)
        port = int(re.search(r"--port (\d+)", command).group(1))  # type: ignore[union-attr]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"README server did not listen: {command}")

    def watch(self, command: str) -> None:
        proc = self.start(command)
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert "coverage" in out, f"{command} showed no status:\n{out}\n{err}"

    def stop_all(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.background:
            try:
                proc.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        self.background.clear()

    def command(self, command: str) -> None:
        program = command.split()[0]
        if command == "scripts/test":
            return  # CI runs exactly this (.ci/run); running it here would run this test again
        if command == "scripts/demo":
            stdin = "What is the capital of France?\n/quit\n"
            out = self.run(str(REPO / "scripts" / "demo"), stdin=stdin, timeout=600).stdout
            assert "Paris" in out, f"the demo's default model did not answer:\n{out}"
        elif command.startswith("swarm-node join"):
            self.node(command)
        elif command.startswith("swarm-client serve"):
            self.server(command)
        elif command.startswith("swarm-client chat"):
            out = self.run(command, stdin="Once upon a time\n/quit\n").stdout
            assert out.strip(), "chat printed nothing"
        elif command.startswith("swarm-client status") and "--watch" in command:
            self.watch(command)
        elif program == "pip":
            self.run(command, timeout=600)
        elif program in ("swarm-export", "swarm-client", "swarm-node", "curl"):
            assert self.run(command).stdout.strip(), f"{command} printed nothing"
        else:
            raise AssertionError(f"the README has a command this test does not know how to run: {command}")


@pytest.fixture
def tour(tmp_path: Path) -> Tour:
    for port in FIXED_PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port}, which the README uses, is taken on this machine")
    if shutil.which("curl") is None:
        pytest.fail("the README uses curl; install it (apt-get install curl)")
    (tmp_path / "shared").symlink_to(SHARED_MODELS.parent)
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SWARM_KEY", "SWARM_API_KEY")}
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SWARM_MDNS_INTERFACES": "127.0.0.1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}  # fmt: skip
    return Tour(work, env)


def test_every_readme_command_runs_as_written(tour: Tour) -> None:
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 10, "the README lost its code blocks?"
    section = None
    try:
        for block in blocks:
            if block.section != section:
                tour.stop_all()
                section = block.section
            if block.language == "python":
                tour.run(f"{sys.executable} - <<'EOF'\n{block.code}\nEOF")
            else:
                for command in bash_commands(block.code):
                    tour.command(command)
    finally:
        tour.stop_all()
    started = [c.split("#")[0].strip() for c in tour.ran]
    assert "swarm-node init" in started and "swarm-client serve --local pkg --port 8000" in started
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("exec scripts/test")
