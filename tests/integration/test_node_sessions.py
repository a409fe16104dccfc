"""Session lifetimes and bad input on real nodes: memory comes back, errors are clear."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from typing import Any

import grpc
import numpy as np
import pytest

from node.server import RunningNode
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.client import AsyncSwarm, Swarm
from swarm.errors import CapacityExceeded, SessionExpired
from swarm.generation import GenerationRequest, GenerationStats
from swarm.package import ModelPackage
from swarm.remote import RemoteSession
from swarm.sampling import SamplingParams
from swarm.tensors import to_wire
from swarm.transport import open_session_call
from tests.conftest import REPO, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import SPANS, LocalCluster, live, member_credentials, open_message, signed, token_step, wait_until


def test_memory_freed_on_close(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)
    with Swarm(peers=cluster.addresses) as swarm:
        stream = swarm.stream("Once upon a time", max_tokens=40)
        next(stream)
        during = live(nodes)
        assert all(count == 1 and size > 0 for count, size in during)
        assert nodes[0].sessions.cache_bytes == 2 * 2 * 4 * 45 * 16 * 4  # K and V, 2 layers, 45 tokens
        list(stream)
        assert wait_until(lambda: live(nodes) == [(0, 0), (0, 0)])
        stream = swarm.stream("Once upon a time", max_tokens=40)
        next(stream)
        stream.close()  # the caller stops reading early
        assert wait_until(lambda: live(nodes) == [(0, 0), (0, 0)])


def test_idle_sessions_expire(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS, idle_timeout_s=0.5)

    async def run() -> None:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        try:
            session = RemoteSession(swarm.channels.get(cluster.addresses[0]), swarm.route(), swarm.package_id, 64,
                                    SamplingParams(), GenerationStats(), credentials=swarm.credentials)  # fmt: skip
            await session.open()
            assert await session.step(STORIES_PROMPT_IDS, SamplingParams()) == STORIES_REFERENCE_IDS[0]
            await asyncio.sleep(1.5)
            assert live(nodes) == [(0, 0), (0, 0)]
            with pytest.raises(SessionExpired, match="idle"):
                await session.step([STORIES_REFERENCE_IDS[0]], SamplingParams())
        finally:
            await swarm.close()

    asyncio.run(run())


CLIENT_SCRIPT = """
import sys
from swarm.client import Swarm
swarm = Swarm(peers=sys.argv[1:])
for piece in swarm.stream("Once upon a time", max_tokens=400, stop_on_eos=False):
    print(piece, flush=True)
    input()  # wait for the test, which kills this process instead of answering
"""


def test_memory_freed_when_client_vanishes(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, *cluster.addresses], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip()  # mid-generation: the first piece arrived
        assert all(count == 1 for count, _ in live(nodes))
    finally:
        client.kill()
        client.wait()
    assert wait_until(lambda: live(nodes) == [(0, 0), (0, 0)])


def test_over_budget_is_resource_exhausted(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    weights = sum(b.bytes for b in stories_package.manifest.blocks) + stories_package.manifest.embedding.bytes
    weights += stories_package.manifest.head.bytes
    per_token = 2 * 5 * 4 * 16 * 4  # K and V for 5 layers of 4 kv heads of 16 floats
    cluster.start(stories_package.root, max_memory=weights + 100 * per_token, max_sessions=2)
    with Swarm(peers=cluster.addresses) as swarm:
        with pytest.raises(CapacityExceeded, match="MiB of KV cache"):
            swarm.generate("Once upon a time", max_tokens=200)
        assert swarm.generate("Once upon a time", max_tokens=40).startswith(", there was a little girl")


def test_session_count_is_bounded(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start(stories_package.root, max_sessions=1)
    with Swarm(peers=cluster.addresses) as swarm:
        first = swarm.stream("Once upon a time", max_tokens=40)
        next(first)
        with pytest.raises(CapacityExceeded, match="1 of 1 sessions"):
            swarm.generate("The dog", max_tokens=5)
        first.close()


# --- bad input, straight onto the wire ------------------------------------------------------


def hidden_step(hidden: pb.Tensor, position: int = 0, step: int = 0, **fields: Any) -> pb.SessionRequest:
    return pb.SessionRequest(step=pb.Step(step=step, position=position, hidden=hidden, **fields))


async def exchange(node: RunningNode, requests: list[pb.SessionRequest]) -> tuple[grpc.StatusCode, str]:
    """Send the requests on one session stream (an opening signed as ours); the status the node ends it with."""
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(node.address, options=options) as channel:
        credentials = member_credentials()
        call, frames = await open_session_call(pb_grpc.SwarmNodeStub(channel), credentials, node.address, node.node_id)
        try:
            for request in requests:
                await call.write(frames.seal(signed(credentials, request)))
                if await call.read() == grpc.aio.EOF:
                    break
            await call.done_writing()
            await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return await call.code(), await call.details() or ""


HIDDEN = np.zeros((1, 1, 64), np.float32)


def bad_requests(
    package: ModelPackage, nodes: list[RunningNode]
) -> dict[str, tuple[int, list[pb.SessionRequest], str]]:
    """name -> (node index, requests, expected text in the error)."""
    second = open_message(package, nodes, 1)
    bad_length = to_wire(HIDDEN)
    bad_length.data = bad_length.data[:-4]
    def ringed(first: int, head: pb.Hop, **fields: object) -> pb.SessionRequest:
        request = open_message(package, nodes, first, **fields)
        request.open.ring_head.CopyFrom(head)
        return request

    elsewhere = pb.Hop(address="127.0.0.1:1", node_id="f" * 24)
    return {
        "chunks without the ring": (0, [open_message(package, nodes, 0, prefill_chunk=4)], "on a ring only"),
        "ring headed by another node": (0, [ringed(0, elsewhere)], "must be the route's first node"),
        "ring head without its id": (1, [ringed(1, pb.Hop(address=nodes[0].address))], "must name its node id"),
        "ring head without an address": (0, [ringed(0, pb.Hop())], "needs an address"),
        "partial step from a client": (0, [open_message(package, nodes, 0), token_step([5], partial=True)],
                                       "between the nodes of a ring only"),
        "partial step on a chain": (1, [second, hidden_step(to_wire(HIDDEN), partial=True)], "of a ring only"),
        "too many hop timings": (1, [second, hidden_step(to_wire(HIDDEN), timings=[pb.HopTiming()] * 6)],
                                 "at most 5 hop timings"),
        "return link of no session": (0, [pb.SessionRequest(attach=pb.ReturnLink(session_id="nobody"))],
                                      "no session here awaits a return link"),
        "step before open": (1, [hidden_step(to_wire(HIDDEN))], "must start with OpenSession"),
        "wrong package": (1, [open_message(package, nodes, 1, package_id="f" * 64)], "this node serves model"),
        "wrong protocol": (1, [open_message(package, nodes, 1, protocol_version=99)], "protocol version 99"),
        "route not for me": (0, [open_message(package, nodes, 1)], "route sends layers [2, 5)"),
        "session too long": (1, [open_message(package, nodes, 1, max_length=100_000)], "outside [1, 512]"),
        "wrong shape": (1, [second, hidden_step(to_wire(np.zeros((1, 1, 63), np.float32)))], "does not match"),
        "wrong dtype": (1, [second, hidden_step(to_wire(np.zeros((1, 1, 64), np.int64)))], "dtype 'int64'"),
        "short data": (1, [second, hidden_step(bad_length)], "needs 256 bytes, got 252"),
        "nan": (1, [second, hidden_step(to_wire(np.full((1, 1, 64), np.nan, np.float32)))], "NaN"),
        "position past the cache": (1, [second, hidden_step(to_wire(HIDDEN), position=9)], "position 9"),
        "step out of order": (1, [second, hidden_step(to_wire(HIDDEN), step=3)], "step 3 out of order"),
        "past the session length": (
            1,
            [second, hidden_step(to_wire(np.zeros((1, 65, 64), np.float32)))],
            "room for 64",
        ),
        "tokens to a middle node": (1, [second, token_step([5])], "takes hidden states"),
        "token id out of vocabulary": (0, [open_message(package, nodes, 0), token_step([512])], "[0, 512)"),
        "hidden to the first node": (
            0,
            [open_message(package, nodes, 0), hidden_step(to_wire(HIDDEN))],
            "takes token ids",
        ),
        "follow asked of a middle node": (1, [second, hidden_step(to_wire(HIDDEN), follow=3)], "only the first node"),
        "follow past the session length": (
            0,
            [open_message(package, nodes, 0), token_step([5, 6], follow=63)],
            "follow of 63 steps; the session has room for 62",
        ),
        "too many stop ids": (
            0,
            [open_message(package, nodes, 0), token_step([5], follow=3, stop_ids=list(range(65)))],
            "at most 64 stop ids",
        ),
    }


def test_bad_input_gets_a_clear_error_and_the_node_keeps_serving(cluster: LocalCluster,
                                                                stories_package: ModelPackage) -> None:  # fmt: skip
    nodes = cluster.start_chain(stories_package.root, SPANS)
    cases = bad_requests(stories_package, nodes)

    async def run() -> None:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        try:
            healthy = RemoteSession(swarm.channels.get(cluster.addresses[0]), swarm.route(), swarm.package_id, 64,
                                    SamplingParams(), GenerationStats(), credentials=swarm.credentials)  # fmt: skip
            await healthy.open()
            tokens = [await healthy.step(STORIES_PROMPT_IDS, SamplingParams())]
            for name, (index, requests, expected) in cases.items():
                code, details = await exchange(nodes[index], requests)
                want = (
                    grpc.StatusCode.FAILED_PRECONDITION
                    if name == "route not for me"
                    else grpc.StatusCode.INVALID_ARGUMENT
                )
                assert code == want, (name, code, details)
                assert expected in details, (name, details)
                tokens.append(await healthy.step([tokens[-1]], SamplingParams()))  # still served
            assert tokens == STORIES_REFERENCE_IDS[: len(tokens)]
            await healthy.close()
        finally:
            await swarm.close()

    asyncio.run(run())
    assert wait_until(lambda: live(nodes) == [(0, 0), (0, 0)])


def test_huge_message_is_refused(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS)
    huge = to_wire(np.zeros((1, 8192, 64), np.float32))  # 2 MiB, over the node's 1 MiB limit
    second = open_message(stories_package, nodes, 1)
    code, details = asyncio.run(exchange(nodes[1], [second, hidden_step(huge)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    with Swarm(peers=cluster.addresses) as swarm:
        ids = list(swarm.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 10)))
    assert ids == STORIES_REFERENCE_IDS[:10]


def test_a_refused_session_leaves_no_coroutine_never_awaited(cluster: LocalCluster,
                                                             stories_package: ModelPackage) -> None:  # fmt: skip
    # refused before its first message is read (no credential): gRPC's request reader, had the
    # node made it, would be collected unawaited ("coroutine ... was never awaited")
    node = cluster.start(stories_package.root)

    async def refused() -> list[str]:
        codes = []
        async with grpc.aio.insecure_channel(node.address) as channel:
            for _ in range(5):
                call = pb_grpc.SwarmNodeStub(channel).Session()
                await call.done_writing()
                codes.append((await call.code()).name)
        return codes

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(refused()) == ["UNAUTHENTICATED"] * 5
        assert wait_until(lambda: node.sessions.sessions == {})
        cluster.loop.run(asyncio.sleep(0.1))  # the node's side of each call is released on its loop
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
