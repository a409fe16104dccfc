"""A generation survives the loss of nodes: kill -9, SIGSTOP, restarts, on 127.0.0.1 with replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from swarm import Swarm
from swarm.errors import NoRouteError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.speculative import AdaptiveWindow, PromptLookup
from tests.conftest import REPO
from tests.helpers import collect

SPANS = [(0, 2), (2, 3), (3, 5)]
LONG = 400  # new tokens of a generation a fault must catch in flight while the first node loops
PROMPT_TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


@dataclass
class NodeProcess:
    span: tuple[int, int]
    package: ModelPackage
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    address: str = ""

    def start(self) -> NodeProcess:
        cmd = [sys.executable, "-m", "node.cli", "join", "--model", str(self.package.root), "--blocks",
               f"{self.span[0]}:{self.span[1]}", "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
               "--no-mdns", "--drain-timeout", "0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("serving "), line
        self.address = line.split(" at ")[1].split()[0]
        self.port = int(self.address.rsplit(":", 1)[1])
        return self

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@contextmanager
def replicated_nodes(package: ModelPackage, spans: list[tuple[int, int]]) -> Iterator[list[NodeProcess]]:
    """Two node processes for each of `spans`, stopped on the way out."""
    nodes = [NodeProcess(span, package).start() for span in spans for _ in range(2)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def replicated(stories_package: ModelPackage) -> Iterator[list[NodeProcess]]:
    """Two nodes for each of three spans, as separate processes."""
    with replicated_nodes(stories_package, SPANS) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def expected(stories_package: ModelPackage) -> dict[str, list[int]]:
    with LocalModel(stories_package) as model:
        ids = model.codec.encode(PROMPT_TEXT)
        tokens = list(model.generate_ids(GenerationRequest(tuple(ids), LONG, stop_on_eos=False)))
    return {"prompt": ids, "tokens": tokens[:60], "long": tokens}


def on_route(nodes: list[NodeProcess], stats: GenerationStats, hop: int) -> NodeProcess:
    address = stats.route[hop].rsplit(":", 1)[0]
    return next(n for n in nodes if n.address == address)


def generate_with_fault(nodes: list[NodeProcess], expected: dict[str, list[int]], hop: int, after: int,
                        fault: signal.Signals, node_loop: bool = False) -> GenerationStats:  # fmt: skip
    """Generate, hitting the route's node at `hop` with `fault` after `after` tokens. Unless
    `node_loop`, the client drives each step, so the fault lands exactly at that token."""
    stats = GenerationStats()
    want = expected["long" if node_loop else "tokens"]
    with Swarm(peers=[n.address for n in nodes], min_step_deadline_s=1.0, open_deadline_s=1.0,
               node_loop=node_loop) as swarm:  # fmt: skip
        tokens = []
        request = GenerationRequest(tuple(expected["prompt"]), len(want), stop_on_eos=False)
        for token in swarm.generate_ids(request, stats):
            tokens.append(token)
            if len(tokens) == after:
                on_route(nodes, stats, hop).signal(fault)
    assert tokens == want
    assert len(stats.recoveries) == 1
    return stats


@pytest.mark.parametrize("hop, after", [(0, 1), (1, 17), (2, 40)], ids=["first", "middle", "last"])
def test_kill_a_node_mid_decode(replicated: list[NodeProcess], expected: dict[str, list[int]], hop: int,
                                after: int) -> None:  # fmt: skip
    stats = generate_with_fault(replicated, expected, hop, after, signal.SIGKILL)
    assert stats.recoveries[0] < 2.0


@pytest.mark.parametrize("hop", [0, 1, 2], ids=["first", "middle", "last"])
def test_kill_a_node_while_the_first_node_loops(replicated: list[NodeProcess], expected: dict[str, list[int]],
                                                hop: int) -> None:  # fmt: skip
    # the first node runs ahead of what the client has read; a generation long enough that the
    # fault lands while it still does (its end is hundreds of milliseconds away)
    stats = generate_with_fault(replicated, expected, hop, 10, signal.SIGKILL, node_loop=True)
    assert stats.recoveries[0] < 2.0


@pytest.mark.parametrize("hop", [0, 1, 2])
def test_kill_a_node_during_prefill(replicated: list[NodeProcess], expected: dict[str, list[int]], hop: int) -> None:
    # stopped first, so the prompt is certainly in flight at this node when it dies
    with Swarm(peers=[n.address for n in replicated], min_step_deadline_s=1.0, open_deadline_s=1.0) as swarm:
        stats = GenerationStats()
        first_route = swarm.swarm.route()
        victim = next(n for n in replicated if n.address == first_route[hop].address)
        victim.signal(signal.SIGSTOP)
        request = GenerationRequest(tuple(expected["prompt"]), 60, stop_on_eos=False)
        tokens = []
        for token in swarm.generate_ids(request, stats):
            if not tokens:
                victim.signal(signal.SIGKILL)
            tokens.append(token)
    assert tokens == expected["tokens"]
    assert len(stats.recoveries) >= 1


@pytest.mark.parametrize("hop", [1, 2], ids=["middle", "last"])
def test_kill_a_node_during_a_chunked_prefill(replicated: list[NodeProcess], expected: dict[str, list[int]],
                                              stories_package: ModelPackage, hop: int) -> None:  # fmt: skip
    # the prompt flows on in chunks of 4; the victim, stopped, holds some of them when it dies, and
    # the new route is replayed in the same chunks: the local runner's tokens, cut the same way
    request = GenerationRequest(tuple(expected["prompt"]), 60, stop_on_eos=False)
    with LocalModel(stories_package, prefill_chunk=4) as local:
        want = list(local.generate_ids(request))
    with Swarm(peers=[n.address for n in replicated], min_step_deadline_s=1.0, open_deadline_s=1.0,
               prefill_chunk=4) as swarm:  # fmt: skip
        stats = GenerationStats()
        victim = next(n for n in replicated if n.address == swarm.swarm.route()[hop].address)
        victim.signal(signal.SIGSTOP)
        tokens = []
        for token in swarm.generate_ids(request, stats):
            if not tokens:
                victim.signal(signal.SIGKILL)
            tokens.append(token)
    assert len(expected["prompt"]) > 3 * 4  # several chunks
    assert tokens == want
    assert len(stats.recoveries) >= 1


@pytest.mark.parametrize("hop, depth", [(1, 1), (2, 1), (1, 2), (2, 3)],
                         ids=["middle", "last", "middle-pipelined", "last-pipelined"])  # fmt: skip
def test_kill_a_node_during_speculative_decoding(
    replicated: list[NodeProcess], expected: dict[str, list[int]], stories_package: ModelPackage, hop: int, depth: int
) -> None:
    # the client drives each verify pass, so the kill lands between passes (pipelined: with passes
    # still in flight, which are lost and sent again); the new route replays the passes that were
    # answered, as they were sent, drafts and all, and the generation goes on as the local runner's
    # the story, then its start again: the model retells it, so drafts hold and passes get chained
    prompt = [*expected["prompt"], *expected["tokens"][:40], *expected["prompt"]]
    request = GenerationRequest(tuple(prompt), 60, stop_on_eos=False, speculative="lookup")
    with LocalModel(stories_package) as local:
        session = local.session(len(prompt) + 61)
        stream = session.speculative_tokens(prompt, 60, request.sampling, (), PromptLookup(), AdaptiveWindow(), None,
                                            depth)  # fmt: skip
        want = asyncio.run(collect(stream))
    stats = GenerationStats()
    with Swarm(peers=[n.address for n in replicated], min_step_deadline_s=1.0, open_deadline_s=1.0,
               speculative_depth=depth) as swarm:  # fmt: skip
        tokens = []
        for token in swarm.generate_ids(request, stats):
            tokens.append(token)
            if len(tokens) == 20:
                on_route(replicated, stats, hop).signal(signal.SIGKILL)
    assert tokens == want
    assert len(stats.recoveries) == 1
    assert stats.draft_proposed > 0  # verify passes ran before the kill, and were replayed after it
    assert (stats.passes_chained > 0) == (depth > 1), stats  # pipelined: chained passes held, and were replayed


def test_a_paused_node_is_routed_around(replicated: list[NodeProcess], expected: dict[str, list[int]]) -> None:
    stats = generate_with_fault(replicated, expected, hop=1, after=10, fault=signal.SIGSTOP)
    assert 1.0 <= stats.recoveries[0] < 4.0  # the step deadline, then the reroute


def test_a_restarted_node_rejoins(replicated: list[NodeProcess], expected: dict[str, list[int]]) -> None:
    first, replica = replicated[0], replicated[1]  # both serve layers [0, 2)
    request = GenerationRequest(tuple(expected["prompt"]), 60, stop_on_eos=False)
    with Swarm(peers=[n.address for n in replicated], min_step_deadline_s=1.0, open_deadline_s=1.0) as swarm:
        assert list(swarm.generate_ids(request)) == expected["tokens"]
        first.signal(signal.SIGKILL)
        first.start()  # same port, new node id: the client's view of the swarm is now stale
        replica.signal(signal.SIGKILL)
        stats = GenerationStats()
        assert list(swarm.generate_ids(request, stats)) == expected["tokens"]
    assert stats.route[0].startswith(first.address)


def test_lost_layers_fail_clearly_after_the_wait(replicated: list[NodeProcess], expected: dict[str, list[int]]) -> None:
    with Swarm(
        peers=[n.address for n in replicated], min_step_deadline_s=1.0, open_deadline_s=1.0, recovery_wait_s=1.5
    ) as swarm:
        request = GenerationRequest(tuple(expected["prompt"]), 60, stop_on_eos=False)
        stream = swarm.generate_ids(request)
        next(stream)
        for node in replicated[2:4]:  # both nodes of layers [2, 3)
            node.signal(signal.SIGKILL)
        with pytest.raises(NoRouteError, match=r"layers \[2, 3\)"):
            list(stream)


def live_sessions(address: str) -> int:
    import asyncio

    import grpc

    from swarm._proto import swarm_pb2 as pb
    from swarm._proto import swarm_pb2_grpc as pb_grpc
    from swarm.auth import ANY_NODE
    from tests.helpers import member_metadata

    async def ask() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            info = await pb_grpc.SwarmNodeStub(channel).Info(pb.InfoRequest(), timeout=2,
                                                             metadata=member_metadata("Info", ANY_NODE))
            return int(info.sessions)

    return asyncio.run(ask())


def test_nothing_leaks_on_the_old_route(replicated: list[NodeProcess], expected: dict[str, list[int]]) -> None:
    generate_with_fault(replicated, expected, hop=1, after=20, fault=signal.SIGKILL)
    survivors = [n for n in replicated if n.proc is not None and n.proc.poll() is None]
    assert len(survivors) == 5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(live_sessions(n.address) for n in survivors):
        time.sleep(0.1)
    assert [live_sessions(n.address) for n in survivors] == [0] * 5
