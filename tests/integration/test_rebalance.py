"""A plain node moves to the layers the swarm needs, without dropping the session it serves.

front [0, 3), mover [0, 3) (a replica), slow [3, 5). When slow announces a tenth of its speed,
layers [3, 5) become the bottleneck and mover, whose layers front still serves, moves there —
after three checks in a row agree, and only once. A session open through mover when the move
begins finishes with the reference tokens (the move drains it first); afterwards new sessions
route around the slow node.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import node.rebalance
import node.server
from node.config import NodeConfig
from node.rebalance import Rebalancer, RebalanceSettings, serve_and_rebalance
from node.server import RunningNode
from swarm.assignment import Move, MoveAdvice
from swarm.client import AsyncSwarm
from swarm.errors import PeerUnavailable
from swarm.generation import GenerationRequest, GenerationStats
from swarm.keys import SwarmKey
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster, wait_until

KEY = SwarmKey.generate()  # a swarm of its own: other tests' nodes on loopback never count here
MDNS = {"mdns": True, "mdns_interfaces": ("127.0.0.1",), "announce_interval_s": 0.2, "swarm_key": KEY}
SETTINGS = RebalanceSettings(interval_s=0.2, min_gain=0.5, patience=3)




def seen_by(node: RunningNode) -> list[tuple[str, int, int, float]]:
    assert node.presence is not None
    return [(p.node_id[:6], p.start, p.end, p.speed) for p in node.presence.membership.peers.values()]


def test_a_node_moves_to_the_bottleneck_and_finishes_its_session_first(
    cluster: LocalCluster, stories_package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # equal devices, 1 ms per layer: measured speeds of this tiny model on a busy machine are noise
    monkeypatch.setattr(node.server, "measure_steps_per_s", lambda span: 1000.0 / (span.end - span.start))
    front = cluster.start(stories_package.root, (0, 3), **MDNS)
    slow = cluster.start(stories_package.root, (3, 5), **MDNS)
    served: list[RunningNode] = []
    stop = asyncio.Event()
    config = NodeConfig(model=stories_package.root, span=(0, 3), host="127.0.0.1", threads=1,
                        identity_file=tmp_path / "mover.key", drain_timeout_s=30, **MDNS)  # type: ignore[arg-type]  # fmt: skip
    mover_task = cluster.loop.submit(serve_and_rebalance(config, stop, SETTINGS, served.append))
    assert wait_until(lambda: len(served) == 1, 30)
    mover = served[0]
    time.sleep(1.5)  # several checks while the swarm is balanced: nobody moves
    assert len(served) == 1

    async def generate_across_the_move() -> list[int]:
        swarm = await AsyncSwarm.connect([front.address, mover.address, slow.address], swarm_key=KEY, mdns=False)
        try:
            by_id = {p.node_id: p for p in swarm.peers}
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 40)
            session = await swarm.open_session(request, GenerationStats(), [by_id[mover.node_id], by_id[slow.node_id]])
            tokens = [await session.step(STORIES_PROMPT_IDS, SamplingParams())]
            slow.set_capacity_scale(0.1)  # e.g. a phone getting hot
            deadline = asyncio.get_running_loop().time() + 30
            while not mover.servicer.draining:  # the move has begun: announcement withdrawn, draining
                assert asyncio.get_running_loop().time() < deadline, f"no move; mover saw {seen_by(mover)}"
                await asyncio.sleep(0.05)
            while len(tokens) < 40:
                tokens.append(await session.step([tokens[-1]], SamplingParams()))
            await session.close()
            return tokens
        finally:
            await swarm.close()

    assert asyncio.run(generate_across_the_move()) == STORIES_REFERENCE_IDS
    assert wait_until(lambda: len(served) == 2, 30)
    moved = served[1]
    assert (moved.servicer.span.start, moved.servicer.span.end) == (3, 5)
    assert (moved.node_id, moved.port) == (mover.node_id, mover.port)  # same identity, same address
    time.sleep(1.5)  # several more checks: no flapping back
    assert len(served) == 2

    async def fresh_generation() -> tuple[list[int], list[str]]:
        swarm = await AsyncSwarm.connect([front.address, moved.address, slow.address], swarm_key=KEY, mdns=False)
        try:
            stats = GenerationStats()
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 40)
            return [t async for t in swarm.text.generate_ids(request, stats)], stats.route
        finally:
            await swarm.close()

    tokens, route = asyncio.run(fresh_generation())
    assert tokens == STORIES_REFERENCE_IDS
    assert route == [f"{front.address}:0-3", f"{moved.address}:3-5"]  # around the slow node
    cluster.loop.call_soon(stop.set)
    mover_task.result(timeout=30)


def test_a_move_is_made_only_after_a_random_wait_and_a_second_look(monkeypatch: pytest.MonkeyPatch) -> None:
    bottleneck = Move((3, 5), "layers [3, 5) are the swarm's bottleneck")
    # first looks come as a streak (patience 3), second looks alone (patience 1); the first time
    # the second look disagrees, as when another replica was seen leaving the same layers first
    answers = iter([bottleneck, None, bottleneck, bottleneck])
    looks: list[int] = []
    waits: list[tuple[float, float]] = []

    def look(self: Rebalancer, node: object, advice: MoveAdvice, patience: int) -> tuple[MoveAdvice, Move | None]:
        looks.append(patience)
        return advice, next(answers)

    def wait(low: float, high: float) -> float:
        waits.append((low, high))
        return 0.01

    monkeypatch.setattr(Rebalancer, "_check", look)
    monkeypatch.setattr(node.rebalance.random, "uniform", wait)

    async def decide() -> Move | None:
        return await Rebalancer(RebalanceSettings(interval_s=0.05)).wait_for_move(None, asyncio.Event())  # type: ignore[arg-type]

    assert asyncio.run(decide()) == bottleneck
    assert looks == [3, 1, 3, 1] and waits == [(0, 0.05), (0, 0.05)]


def test_a_move_whose_blocks_cannot_be_fetched_serves_the_old_layers_again(
    cluster: LocalCluster, stories_package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves = iter([Move((3, 5), "a test asked for it")])

    async def one_move(self: Rebalancer, node: RunningNode, stop: asyncio.Event) -> Move | None:
        return next(moves, None)  # the first time: move; afterwards: serve until stopped

    async def no_peer_has_them(config: NodeConfig, quiet: bool = False) -> NodeConfig:
        raise PeerUnavailable("could not fetch block_003.onnx: no peer has it")

    monkeypatch.setattr(Rebalancer, "wait_for_move", one_move)
    monkeypatch.setattr(node.rebalance, "missing_files", lambda package, start, end: ["block_003.onnx"])
    monkeypatch.setattr(node.rebalance, "prepare", no_peer_has_them)
    served: list[tuple[int, int, int]] = []
    stop = asyncio.Event()
    config = NodeConfig(model=stories_package.root, span=(0, 3), host="127.0.0.1", threads=1, mdns=False,
                        swarm_key=KEY)  # fmt: skip
    task = cluster.loop.submit(serve_and_rebalance(config, stop, SETTINGS, lambda n: served.append(
        (n.servicer.span.start, n.servicer.span.end, n.port))))  # fmt: skip
    assert wait_until(lambda: len(served) == 2, 30)
    assert [s[:2] for s in served] == [(0, 3), (0, 3)] and served[0][2] == served[1][2]  # same layers, same port
    cluster.loop.call_soon(stop.set)
    task.result(timeout=30)
