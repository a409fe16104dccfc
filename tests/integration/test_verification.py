"""Verification on real nodes: a node made dishonest by the test is caught, banned and routed
around while the generation goes on to the local runner's tokens; honest replicas never disagree.

The dishonesty lives here only: the test wraps one in-process node's span runtime so that 1 % of
its outputs come out nudged (one number, by 1e-3: too little to change a greedy token, enough to
differ bit for bit). Nothing in the product can be told to lie.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from node.server import RunningNode
from swarm import Swarm
from swarm.config import RuntimeOptions
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.runtime import KVCache
from swarm.span import SpanRuntime
from swarm.tensors import to_wire
from swarm.verification import agree
from tests.conftest import STORIES_PROMPT_IDS
from tests.helpers import LocalCluster

LONG = 400  # new tokens: long enough for a 1 % liar to lie, and a 5 % check to follow
DETECTION_BOUND = 100  # steps from the first lie to the ban (a 5 % check misses 100 steps in a row 0.6 % of the time)


@pytest.fixture(scope="module")
def reference(stories_package: ModelPackage) -> list[int]:
    with LocalModel(stories_package) as local:
        return list(local.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), LONG, stop_on_eos=False)))


class Liar:
    """Wraps `node`'s span runtime (in this test only) so that a seeded 1 % of the hidden states
    it computes leave with one number nudged; `lies` counts them, `on_lie` hears of each."""

    def __init__(self, node: RunningNode, rate: float = 0.01, seed: int = 0) -> None:
        self.lies = 0
        self.on_lie: Callable[[], None] = lambda: None
        span = node.servicer.span
        rng = random.Random(seed)
        honest_run, honest_batch = span.run_blocks, span.forward_batch

        def nudged(hidden: np.ndarray) -> np.ndarray:
            if rng.random() >= rate:
                return hidden
            self.lies += 1
            self.on_lie()
            hidden = hidden.copy()
            hidden[0, -1, 0] += 1e-3
            return hidden

        def run_blocks(hidden: np.ndarray, caches: list[KVCache]) -> np.ndarray:
            return nudged(honest_run(hidden, caches))

        def forward_batch(hidden: np.ndarray, *args: Any) -> Any:  # several sessions in one pass
            outputs = honest_batch(hidden, *args)
            for output in outputs:
                assert output.hidden is not None  # layers [0, 2): hidden states go on
                output.hidden = nudged(output.hidden)
            return outputs

        span.run_blocks = run_blocks  # type: ignore[method-assign]
        span.forward_batch = forward_batch  # type: ignore[method-assign,assignment]


def options(package: ModelPackage, **more: Any) -> dict[str, Any]:
    return {"private": True, "private_package": str(package.root), "verify_seed": 1, **more}


def test_a_lying_node_is_caught_banned_and_routed_around(cluster: LocalCluster, stories_package: ModelPackage,
                                                          reference: list[int]) -> None:  # fmt: skip
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (0, 2), (0, 2), (2, 5)])
    stats = GenerationStats()
    tokens: list[int] = []
    first_lie: list[int] = []
    with Swarm(peers=cluster.addresses, **options(stories_package, verify_fraction=0.05)) as swarm:
        on_route = swarm.swarm.route()[0]  # the node the generation will go through first
        liar_node = next(n for n in nodes if n.address == on_route.address)
        liar = Liar(liar_node)
        liar.on_lie = lambda: first_lie.append(len(tokens)) if not first_lie else None
        caught_at = None
        for token in swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), LONG, stop_on_eos=False), stats):
            tokens.append(token)
            if caught_at is None and liar_node.node_id in swarm.swarm.bans.banned(time.monotonic()):
                caught_at = len(tokens)
        assert tokens == reference  # the lies never changed a token, and the honest replicas took over
        assert first_lie and caught_at is not None, (liar.lies, stats)
        assert caught_at - first_lie[0] <= DETECTION_BOUND, (first_lie, caught_at)
        assert stats.banned == [liar_node.node_id] and len(stats.recoveries) == 1
        assert not stats.route[0].startswith(liar_node.address)
        # the ban outlives the generation: routing keeps away from the liar
        assert all(p.node_id != liar_node.node_id for p in swarm.swarm.route())
        again = GenerationStats()
        assert list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40, stop_on_eos=False),
                                       again)) == reference[:40]  # fmt: skip
        assert not again.route[0].startswith(liar_node.address)


def test_honest_replicas_raise_no_alarm_on_the_wire(cluster: LocalCluster, stories_package: ModelPackage,
                                                    reference: list[int]) -> None:  # fmt: skip
    cluster.start_chain(stories_package.root, [(0, 2), (0, 2), (2, 5), (2, 5)])
    stats = GenerationStats()
    with Swarm(peers=cluster.addresses, **options(stories_package, verify_fraction=1.0)) as swarm:
        request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 300, stop_on_eos=False)
        assert list(swarm.generate_ids(request, stats)) == reference[:300]
    assert stats.verified >= 300 and stats.mismatches == 0 and stats.banned == []


@pytest.fixture(scope="module")
def replicas(stories_package: ModelPackage) -> Iterator[tuple[SpanRuntime, SpanRuntime]]:
    # two replicas of one span, loaded apart, with other thread counts (as two nodes might run)
    yield (SpanRuntime(stories_package, 0, 2, RuntimeOptions(threads=1)),
           SpanRuntime(stories_package, 0, 2, RuntimeOptions(threads=2)))  # fmt: skip


def test_ten_thousand_honest_steps_compare_equal(replicas: tuple[SpanRuntime, SpanRuntime]) -> None:
    # the comparison verification makes, on 10,000 real step outputs of two replicas: sequences of
    # a prompt then single tokens, as sessions send them
    a, b = replicas
    rng = np.random.default_rng(0)
    compared = alarms = 0
    while compared < 10_000:
        caches_a, caches_b = a.new_caches(512), b.new_caches(512)
        ids = [1, *(int(t) for t in rng.integers(3, 512, 7))]
        for _ in range(500):
            hidden = a.embed(ids)
            ours = to_wire(a.run_blocks(hidden, caches_a)[:, -1:])
            theirs = to_wire(b.run_blocks(hidden, caches_b)[:, -1:])
            alarms += not agree(ours, theirs, exact=True)
            compared += 1
            ids = [int(rng.integers(3, 512))]
    assert compared >= 10_000 and alarms == 0


def test_a_lying_replica_met_as_the_shadow_is_banned_and_the_route_goes_on(
    cluster: LocalCluster, stories_package: ModelPackage, reference: list[int]
) -> None:
    nodes = cluster.start_chain(stories_package.root, [(0, 2), (0, 2), (0, 2), (2, 5)])
    with Swarm(peers=cluster.addresses, **options(stories_package, verify_fraction=1.0)) as swarm:
        on_route = swarm.swarm.route()[0]
        replicas = [n for n in nodes[:3] if n.address != on_route.address]
        liar_node = replicas[0]
        Liar(liar_node, rate=0.05)
        banned: list[str] = []
        for _ in range(10):  # each generation audits against a replica drawn at random: meet the liar
            stats = GenerationStats()
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 100, stop_on_eos=False)
            assert list(swarm.generate_ids(request, stats)) == reference[:100]
            assert stats.recoveries == [] and stats.route[0].startswith(on_route.address)  # the route's node is honest
            banned += stats.banned
            if banned:
                break
    assert banned == [liar_node.node_id]
