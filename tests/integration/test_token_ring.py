"""The token ring: the last node returns each token straight to the first, and prompts flow
through the stages in chunks; both exact, both seen on the wire (bench/links.py relays)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from bench.links import LinkProfile, emulated_links
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.client import AsyncSwarm, Swarm
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.transport import open_session_call
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import LocalCluster, member_credentials

SPANS = [(0, 2), (2, 3), (3, 5)]
PROMPT = (1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338)  # 17 tokens


def backward_bytes(cluster: LocalCluster, tokens: int, **options: object) -> tuple[list[int], list[int], int]:
    """Greedy tokens through the chain, what came back towards the client on each relay, and
    how many connections reached the first node's relay."""
    with emulated_links(cluster.addresses, LinkProfile()) as (addresses, links):
        with Swarm(peers=addresses, **options) as swarm:
            ids = list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), tokens, stop_on_eos=False)))
        stats = links.stats()
    return ids, [s.backward.bytes for s in stats], stats[0].connections


def test_the_last_node_returns_each_token_straight_to_the_first(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    runs = {ring: [backward_bytes(cluster, n, token_ring=ring) for n in (5, 45)] for ring in (True, False)}
    for (short, _, _), (long, _, _) in runs.values():
        assert long[:40] == STORIES_REFERENCE_IDS and short == long[:5]
    # 40 more tokens: back up the chain, every one crosses the 2nd and 3rd nodes' links backwards;
    # on the ring nothing comes back up them (what does is HTTP/2 housekeeping, a few bytes)
    chain_more = [b - a for a, b in zip(runs[False][0][1], runs[False][1][1], strict=True)]
    ring_more = [b - a for a, b in zip(runs[True][0][1], runs[True][1][1], strict=True)]
    assert all(more >= 40 * 20 for more in chain_more[1:]), chain_more  # a StepResult a token, each way
    assert all(more < 0.1 * chain for more, chain in zip(ring_more[1:], chain_more[1:], strict=True)), ring_more
    # the return link: the last node dials the first node's relay, as the client did
    assert (runs[True][1][2], runs[False][1][2]) == (2, 1)


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_a_chunked_prefill_gives_the_local_runners_tokens_cut_the_same_way(
    cluster: LocalCluster, stories_package: ModelPackage, chunk: int
) -> None:
    cluster.start_chain(stories_package.root, SPANS)
    request = GenerationRequest(PROMPT, 30, stop_on_eos=False)
    with LocalModel(stories_package, prefill_chunk=chunk) as local:
        expected = list(local.generate_ids(request))
    with emulated_links(cluster.addresses, LinkProfile()) as (addresses, links):
        with Swarm(peers=addresses, prefill_chunk=chunk) as swarm:
            stats = GenerationStats()
            assert list(swarm.generate_ids(request, stats)) == expected
        # every step's result came round the ring with each hop's own compute time, in route order
        assert [len(hops) for hops in stats.hop_ms] == [3] * 30
        assert all(ms > 0 for hops in stats.hop_ms for ms in hops)
        forwarded = links.stats()[1].forward.bytes
    # the chunks went on one by one: each a message of its own to the second node
    assert forwarded >= len(PROMPT) * 64 * 4
    with LocalModel(stories_package, prefill_chunk=0) as one_chunk:  # the determinism rule, stated in a test
        assert list(one_chunk.generate_ids(request)) == expected  # stories260K: the same greedy tokens


def test_only_the_sessions_last_node_may_attach_its_return_link(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)

    async def attach(session_id: str) -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(nodes[0].address) as channel:
            credentials = member_credentials()  # a member of the swarm, but not the route's last node
            stub = pb_grpc.SwarmNodeStub(channel)
            call, frames = await open_session_call(stub, credentials, nodes[0].address, nodes[0].node_id)
            await call.write(frames.seal(pb.SessionRequest(attach=pb.ReturnLink(session_id=session_id))))
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return await call.code(), await call.details() or ""

    async def run() -> list[int]:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        try:
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 10, stop_on_eos=False)
            session = await swarm.open_session(request, GenerationStats())
            tokens = [await session.step(STORIES_PROMPT_IDS, request.sampling)]
            code, details = await attach(session.session_id)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "only the last node of the session's route" in details, details
            async for token in session.tokens([tokens[-1]], 9, request.sampling):
                tokens.append(token)
            await session.close()
            return tokens
        finally:
            await swarm.close()

    assert asyncio.run(run()) == STORIES_REFERENCE_IDS[:10]  # the session never noticed
