"""The first node closes the token loop: one request from the client, one answer per token.

With `follow`, the first node of a route feeds each sampled token back in as the next step by
itself, so the client is off the per-token path. These tests hold that to the wire (one step
sent, every answer read), to the reference tokens, and to the client-driven loop it replaces.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from node.server import RunningNode
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.client import Swarm
from swarm.config import RuntimeOptions
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.transport import open_session_call
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import (
    SPANS,
    LocalCluster,
    live,
    member_credentials,
    open_message,
    signed,
    start_node,
    token_step,
    wait_until,
)


async def follow_on_the_wire(node: RunningNode, open_request: pb.SessionRequest, step: pb.SessionRequest,
                             replies: int) -> tuple[list[pb.StepResult], grpc.StatusCode]:  # fmt: skip
    """Open, send ONE step, then only read: `replies` answers, and the status after we end the stream."""
    async with grpc.aio.insecure_channel(node.address) as channel:
        credentials = member_credentials()
        call, frames = await open_session_call(pb_grpc.SwarmNodeStub(channel), credentials, node.address, node.node_id)
        await call.write(frames.seal(signed(credentials, open_request)))
        assert frames.open(await call.read()).WhichOneof("kind") == "opened"
        await call.write(frames.seal(step))
        results = []
        for _ in range(replies):
            reply = frames.open(await asyncio.wait_for(call.read(), 10))
            results.append(reply.result)
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), 10) == grpc.aio.EOF  # nothing more was coming
        return results, await call.code()


def test_one_step_sent_every_token_answered(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)
    step = token_step(STORIES_PROMPT_IDS, follow=19)
    results, code = asyncio.run(follow_on_the_wire(nodes[0], open_message(stories_package, nodes, 0),
                                                   step, replies=20))  # fmt: skip
    assert code == grpc.StatusCode.OK
    assert [r.token for r in results] == STORIES_REFERENCE_IDS[:20]
    assert [r.step for r in results] == list(range(20))
    assert all([t.node_id for t in r.timings] == [n.node_id for n in nodes] for r in results)
    assert wait_until(lambda: live(nodes) == [(0, 0), (0, 0)])


def test_following_ends_after_a_stop_id(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)
    stop = STORIES_REFERENCE_IDS[3]  # first seen at index 3 of the reference
    step = token_step(STORIES_PROMPT_IDS, follow=30, stop_ids=[stop, 511])
    results, code = asyncio.run(follow_on_the_wire(nodes[0], open_message(stories_package, nodes, 0),
                                                   step, replies=4))  # fmt: skip
    assert code == grpc.StatusCode.OK  # and no fifth answer: the stream ended with the fourth
    assert [r.token for r in results] == STORIES_REFERENCE_IDS[:4]


@pytest.mark.parametrize("node_loop", [True, False], ids=["node loop", "client loop"])
@pytest.mark.parametrize("spans", [[(0, 5)], SPANS], ids=["1 node", "2 nodes"])
def test_both_loops_give_the_local_runners_tokens(cluster: LocalCluster, stories_package: ModelPackage,
                                                  spans: list[tuple[int, int]], node_loop: bool) -> None:  # fmt: skip
    cluster.start_chain(stories_package.root, spans)
    prompt = tuple(range(3, 200))  # a long prompt, then 60 steps
    request = GenerationRequest(prompt, 60, stop_on_eos=False)
    with LocalModel(stories_package.root, RuntimeOptions(threads=1)) as local:
        expected = list(local.generate_ids(request))
    with Swarm(peers=cluster.addresses, node_loop=node_loop) as swarm:
        stats = GenerationStats()
        assert list(swarm.generate_ids(request, stats)) == expected
        assert len(stats.step_s) == 59
        assert list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40))) == STORIES_REFERENCE_IDS


def test_a_node_on_one_spinning_pool_serves_the_reference(stories_package: ModelPackage) -> None:
    node = start_node("--model", str(stories_package.root), "--no-mdns", "--spin")
    try:
        address = node.serving.split()[5]  # type: ignore[attr-defined]
        with Swarm(peers=[address]) as swarm:
            assert list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 40))) == STORIES_REFERENCE_IDS
    finally:
        node.terminate()
        node.wait(timeout=15)
    assert "[W:onnxruntime" not in (node.stderr.read() if node.stderr else "")  # no warnings from its pool setup
