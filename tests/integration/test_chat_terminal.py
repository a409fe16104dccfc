"""`swarm-client chat` (and `generate`, `demo`) driven through a real pseudo-terminal, as a person
would use them: the terminal is the program's controlling terminal, so Ctrl-C is the terminal's."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from node.server import RunningNode
from swarm.local import LocalModel
from swarm.package import ModelPackage
from tests.helpers import LocalCluster, Terminal


def test_chat_streams_resets_and_quits(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    term = Terminal([sys.executable, "-m", "swarm.apps.cli", "chat", *peers, "--max-tokens", "30"])
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


@contextlib.contextmanager
def stalled(cluster: LocalCluster) -> Iterator[None]:
    """Every node of `cluster` stops answering (their event loop is held) until the block ends."""
    gate = threading.Event()

    async def hold() -> None:
        gate.wait(60)  # blocks the loop itself, on purpose

    cluster.loop.submit(hold())
    try:
        yield
    finally:
        gate.set()


def test_ctrl_c_stops_the_answer_and_at_the_prompt_quits(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, [(0, 2), (2, 5)])
    peers = [arg for address in cluster.addresses for arg in ("--peer", address)]
    term = Terminal([sys.executable, "-m", "swarm.apps.cli", "chat", *peers, "--max-tokens", "30"])
    try:
        assert "Ctrl-C stops a reply" in term.expect("you> ")
        with stalled(cluster):  # the reply waits for a swarm that does not answer
            term.type("Once upon a time")
            term.expect("bot> ")
            term.interrupt()
            assert term.expect("you> ").strip() == "^C (stopped)"  # the terminal echoes the ^C
        term.type("Once upon a time")  # the chat goes on, on the same swarm
        assert "there was a little girl named Lily" in term.expect("you> ")
        term.interrupt()
    finally:
        code = term.close()
    assert code == 0, term.screen


def node_processes(parent: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:  # the field after the state is the parent's pid
                pids.append(int(stat.parent.name))
    return pids


def test_ctrl_c_in_the_demo_stops_the_answer_not_the_nodes(stories_package: ModelPackage) -> None:
    term = Terminal([sys.executable, "-m", "swarm.apps.cli", "demo", "--model", str(stories_package.root),
                     "--nodes", "2", "--max-tokens", "30"])  # fmt: skip
    nodes: list[int] = []
    try:
        term.expect("you> ", timeout_s=120)
        nodes = node_processes(term.proc.pid)
        assert len(nodes) == 2
        for pid in nodes:
            os.kill(pid, signal.SIGSTOP)  # the answer waits: Ctrl-C lands while it streams
        term.type("Once upon a time")
        term.expect("bot> ")
        term.interrupt()
        assert term.expect("you> ").strip() == "^C (stopped)"
        for pid in nodes:
            os.kill(pid, signal.SIGCONT)  # had the terminal's SIGINT reached them, they would leave now
        time.sleep(1)  # time to leave, for a node that would
        term.type("Once upon a time")
        assert "there was a little girl named Lily" in term.expect("you> ")
        assert all(Path(f"/proc/{pid}").exists() for pid in nodes)
        term.type("/quit")
    finally:
        for pid in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        code = term.close()
    assert code == 0, term.screen


def serving(nodes: list[RunningNode], past: int, timeout_s: float = 60.0) -> RunningNode:
    """The node whose session has `past` tokens in its cache, as soon as one has."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in nodes:
            if any(s.length >= past for s in list(node.sessions.sessions.values())):
                return node
        time.sleep(0.001)
    raise AssertionError(f"no node got {past} tokens into a session")


def test_a_recovery_warning_starts_on_a_line_of_its_own(stories_package: ModelPackage) -> None:
    prompt, tokens = "Once upon a time", 400
    with LocalModel(stories_package) as local:
        expected = local.generate(prompt, tokens, temperature=0, stop_on_eos=False)
        prompt_len = len(local.codec.encode(prompt))
    clusters = {name: LocalCluster() for name in ("a", "b")}  # loops of their own: one can stall alone
    try:
        nodes = {name: c.start(stories_package.root, (0, 5)) for name, c in clusters.items()}
        peers = [arg for node in nodes.values() for arg in ("--peer", node.address)]
        term = Terminal([sys.executable, "-m", "swarm.apps.cli", "generate", *peers, "--max-tokens", str(tokens),
                         "--ignore-eos", prompt])  # fmt: skip
        try:
            node = serving(list(nodes.values()), past=prompt_len + 8)
            with stalled(next(c for name, c in clusters.items() if nodes[name] is node)):
                term.expect("rerouting")  # past the step deadline, the client gives up on it
            term.expect("tokens/s")
        finally:
            code = term.close()
    finally:
        for c in clusters.values():
            c.stop()
    assert code == 0
    lines = term.screen.replace("\r\n", "\n").split("\n")
    warnings = [i for i, line in enumerate(lines) if "route failed" in line]
    assert len(warnings) == 1 and lines[warnings[0]].startswith("swarm-client: warning: route failed at "), lines
    before, after = "\n".join(lines[: warnings[0]]), "\n".join(lines[warnings[0] + 1 :])
    assert expected.startswith(before) and len(before) > 10, before  # the answer so far, then a line break
    assert after.startswith(expected[len(before) :].removeprefix("\n") + "\n"), after  # and the rest, unbroken
