"""Pipelined speculation (speculative depth > 1): verify passes sent before the ones ahead of them
come back, each chained on the one ahead; the last node cancels those whose pass ahead did not
hold, and the ring's head runs the next pass while earlier answers are still coming round. The
swarm makes exactly the local runner's passes at the same depth, so the same tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from swarm._proto import swarm_pb2 as pb
from swarm.client import AsyncSwarm, Swarm
from swarm.errors import InvalidRequest, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.remote import RemoteSession
from swarm.sampling import SamplingParams
from swarm.speculative import MAX_DEPTH, AdaptiveWindow, Pass, PromptLookup
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster, collect, wait_until

CHAINS = {1: [(0, 5)], 2: [(0, 2), (2, 5)], 3: [(0, 2), (2, 3), (3, 5)], 4: [(0, 1), (1, 2), (2, 3), (3, 5)]}
SEEDED = SamplingParams(temperature=0.8, top_k=40, seed=11)
N = 120
# the story, then its start again: the model tells it again, so lookup proposes well and passes
# hold whole often enough to be chained (on the bare prompt the window rarely speculates at all)
PROMPT = [*STORIES_PROMPT_IDS, *STORIES_REFERENCE_IDS, *STORIES_PROMPT_IDS]


@asynccontextmanager
async def prompted(addresses: list[str]) -> AsyncIterator[tuple[RemoteSession, int]]:
    """A session through the swarm at `addresses` that has taken the stories prompt, and the token it
    answered (the reference's first); closed, with the client, on leaving."""
    request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 16, stop_on_eos=False)
    swarm = await AsyncSwarm.connect(addresses)
    try:
        session = await swarm.open_session(request, GenerationStats())
        try:
            yield session, await session.step(STORIES_PROMPT_IDS, request.sampling)
        finally:
            await session.close()
    finally:
        await swarm.close()


def local_tokens(package: ModelPackage, depth: int, params: SamplingParams | None = None,
                 stats: GenerationStats | None = None) -> list[int]:  # fmt: skip
    """The local runner's speculative tokens (prompt lookup) with `depth` passes in flight."""
    with LocalModel(package) as model:
        session = model.session(len(PROMPT) + N + 1)
        stream = session.speculative_tokens(PROMPT, N, params or SamplingParams(), (), PromptLookup(),
                                            AdaptiveWindow(), stats, depth)  # fmt: skip
        return asyncio.run(collect(stream))


def swarm_tokens(swarm: Swarm, params: SamplingParams | None = None) -> tuple[list[int], GenerationStats]:
    stats = GenerationStats()
    request = GenerationRequest(tuple(PROMPT), N, params or SamplingParams(), stop_on_eos=False,
                                speculative="lookup")  # fmt: skip
    return list(swarm.generate_ids(request, stats)), stats


@pytest.fixture(scope="module")
def local(stories_package: ModelPackage) -> dict[tuple[str, int], list[int]]:
    return {(kind, depth): local_tokens(stories_package, depth, params)
            for kind, params in (("greedy", None), ("seeded", SEEDED)) for depth in (1, 2, 3)}  # fmt: skip


def test_local_pipelined_passes_chain_hold_and_drop(stories_package: ModelPackage,
                                                    local: dict[tuple[str, int], list[int]]) -> None:  # fmt: skip
    stats = GenerationStats()
    tokens = local_tokens(stories_package, 2, stats=stats)
    assert tokens == local[("greedy", 2)]
    # chained passes ran and held, and some were dropped behind a pass that did not hold: both paths
    assert stats.passes_chained > 0 and stats.passes_dropped > 0, stats
    assert len(tokens) - 1 == stats.draft_accepted + stats.passes
    # the passes differ from depth 1's (other groupings, other floating-point paths), the greedy
    # tokens on this prompt do not, nor do they differ from plain greedy's
    with LocalModel(stories_package) as model:
        plain = list(model.generate_ids(GenerationRequest(tuple(PROMPT), N, stop_on_eos=False)))
    assert local[("greedy", 2)] == local[("greedy", 1)] == local[("greedy", 3)] == plain


@pytest.mark.parametrize("nodes, depth", [(1, 2), (2, 2), (3, 2), (3, 3), (4, 2)])
def test_swarm_pipelined_speculation_equals_the_local_runners(
    cluster: LocalCluster, stories_package: ModelPackage, local: dict[tuple[str, int], list[int]], nodes: int,
    depth: int,
) -> None:  # fmt: skip
    cluster.start_chain(stories_package.root, CHAINS[nodes])
    with Swarm(peers=cluster.addresses, speculative_depth=depth) as swarm:
        greedy, stats = swarm_tokens(swarm)
        seeded, _ = swarm_tokens(swarm, SEEDED)
    assert greedy == local[("greedy", depth)]
    assert seeded == local[("seeded", depth)]
    assert stats.passes_chained > 0 and stats.passes_dropped > 0, stats
    assert wait_until(lambda: all(len(node.sessions.sessions) == 0 for node in cluster.nodes), timeout_s=5)


def test_the_last_node_cancels_a_chained_step_whose_pass_ahead_did_not_hold(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    cluster.start_chain(stories_package.root, CHAINS[3])
    reference = STORIES_REFERENCE_IDS

    async def run() -> None:
        async with prompted(cluster.addresses) as (session, first):
            assert first == reference[0]
            start = session.length
            # three passes on their way at once: the first holds whole (the reference's next tokens),
            # the second is chained on it with a wrong guess of its last token, the third on the second
            held = Pass(start, [first, *reference[1:3]], list(reference[1:3]))
            wrong = Pass(start + 3, [7, 8], [7, 8], chained=True)
            behind = Pass(start + 5, [9], [9], chained=True)
            for sent in (held, wrong, behind):
                await session.send_verify(sent)
            assert await session.receive_verify(held) == (2, reference[3])
            wrong.live = behind.live = False
            for dropped in (wrong, behind):
                assert await session.receive_verify(dropped) == (0, 0)  # cancelled: nothing computed
            assert session.length == start + 3
            # the next pass starts again from the last token received: every node drops the rest
            again = Pass(session.length, [reference[3], reference[4]], [reference[4]])
            await session.send_verify(again)
            assert await session.receive_verify(again) == (1, reference[5])
            # a chained pass that holds counts its guess as accepted
            chained = Pass(session.length, [reference[5], reference[6]], [reference[5], reference[6]], True)
            await session.send_verify(chained)
            assert await session.receive_verify(chained) == (2, reference[7])

    asyncio.run(run())


def test_a_chained_step_is_checked(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, CHAINS[2])

    async def refused(*passes: Pass) -> str:
        async with prompted(cluster.addresses) as (session, first):
            sent = [Pass(session.length + p.position, [first, *p.ids[1:]] if p.position == 0 and not p.chained
                         else p.ids, p.drafts, p.chained) for p in passes]  # fmt: skip
            with pytest.raises(SwarmError) as raised:
                for p in sent:
                    await session.send_verify(p)
                for p in sent:
                    await session.receive_verify(p)
            return str(raised.value)

    # not after a verify step (the prompt's step was a plain one)
    assert "must follow a verify step" in asyncio.run(refused(Pass(0, [5, 6], [5, 6], chained=True)))
    # not where the step ahead ends
    assert "starts where the step ahead ends" in asyncio.run(
        refused(Pass(0, [0, 5], [5]), Pass(1, [6], [6], chained=True)))
    # and the client checks its own: drafts are the last of a step's ids
    assert "drafts must be the last of its ids" in asyncio.run(refused(Pass(0, [0, 5, 6], [5])))


def test_depth_is_bounded(stories_package: ModelPackage) -> None:
    with pytest.raises(InvalidRequest, match="speculative depth must be 1 to 8"):
        local_tokens(stories_package, 9)


def test_a_chained_step_must_be_drafts_only_on_the_wire(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    # a hand-made step (no client check): chained on a pass that held, with a token that is not a draft
    cluster.start_chain(stories_package.root, CHAINS[1])

    async def run() -> str:
        async with prompted(cluster.addresses) as (session, first):
            ahead = Pass(session.length, [first, STORIES_REFERENCE_IDS[1]], [STORIES_REFERENCE_IDS[1]])
            await session.send_verify(ahead)
            assert await session.receive_verify(ahead) == (1, STORIES_REFERENCE_IDS[2])
            assert session._call is not None and session._frames is not None
            bad = pb.Step(step=2, position=session.length, tokens=pb.TokenIds(ids=[STORIES_REFERENCE_IDS[2], 5]),
                          drafts=[5], chained=True)  # fmt: skip
            await session._call.write(session._frames.seal(pb.SessionRequest(step=bad)))
            with pytest.raises(SwarmError) as raised:
                await session.receive_verify(Pass(0, [1, 5], [5], chained=True))
            return str(raised.value)

    assert "drafts and nothing else" in asyncio.run(run())


def test_more_passes_in_flight_than_a_head_holds_are_answered_in_order(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    # twelve verify steps sent before any answer is read: the ring's head holds at most MAX_DEPTH
    # results outstanding and reads on as they go out, so all twelve are answered, in order
    cluster.start_chain(stories_package.root, CHAINS[3])
    reference = STORIES_REFERENCE_IDS

    async def run() -> list[tuple[int, int]]:
        async with prompted(cluster.addresses) as (session, first):
            start = session.length
            assert first == reference[0]
            # each pass one reference token on from the last, its draft the next: it keeps that draft,
            # and the next pass starts over its own (a rollback of one position, which nothing forbids)
            sent = [Pass(start + i, [reference[i], reference[i + 1]], [reference[i + 1]]) for i in range(MAX_DEPTH + 4)]
            for one in sent:
                await session.send_verify(one)
            return [await session.receive_verify(one) for one in sent]

    assert asyncio.run(run()) == [(1, reference[i + 2]) for i in range(MAX_DEPTH + 4)]
