"""Who a node admits and what they may take, attacked with raw stubs on 127.0.0.1: credentials
bound to one node and one request, per-client limits through relays, open-swarm limits across
reconnects, and undecodable messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import pytest

from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import new_exchange
from swarm.client import AsyncSwarm
from swarm.errors import CapacityExceeded, InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats
from swarm.package import ModelPackage
from swarm.remote import RemoteSession
from swarm.routing import PeerView
from swarm.sampling import SamplingParams
from swarm.transport import request_bytes
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import TEST_SWARM_KEY, LocalCluster, member_credentials, member_metadata, wait_until

SPANS = [(0, 2), (2, 5)]
FRESH_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # no connection shared with other channels


async def failure(pending: object) -> tuple[str, str]:
    """The status a call (a coroutine, or a stream to read to its end) failed with."""
    try:
        if hasattr(pending, "__aiter__"):
            async for _ in pending:  # type: ignore[attr-defined]
                pass
        else:
            await pending  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


# --- credentials bound to their node and their request ------------------------------------------------


@pytest.mark.parametrize("attack", ["Info at another node", "FetchFile at another node", "Session at another node",
                                    "FetchFile for another file", "Info credential for Health"])  # fmt: skip
def test_a_captured_credential_is_good_for_nothing_else(cluster: LocalCluster, stories_package: ModelPackage,
                                                        attack: str) -> None:  # fmt: skip
    one, two = cluster.start(stories_package.root), cluster.start(stories_package.root)
    credentials = member_credentials()
    manifest = pb.FetchFileRequest(package_id=stories_package.package_id, file="manifest.json")
    block = pb.FetchFileRequest(package_id=stories_package.package_id, file=stories_package.manifest.blocks[0].file)

    async def run() -> tuple[str, str]:
        async with grpc.aio.insecure_channel(one.address) as first, grpc.aio.insecure_channel(two.address) as second:
            to_one, to_two = pb_grpc.SwarmNodeStub(first), pb_grpc.SwarmNodeStub(second)
            # the call a member makes to node one, and what a listener captures of it
            if attack.startswith("Info"):
                captured = credentials.call("Info", one.node_id, request_bytes(pb.InfoRequest()))[0]
                assert (await to_one.Info(pb.InfoRequest(), metadata=captured, timeout=5)).node_id == one.node_id
            elif attack.startswith("FetchFile"):
                captured = credentials.call("FetchFile", one.node_id, request_bytes(manifest))[0]
                assert await failure(to_one.FetchFile(manifest, metadata=captured, timeout=5)) == ("OK", "")
            else:
                captured = credentials.call("Session", one.node_id, x_public=new_exchange()[1])[0]
                call = to_one.Session(metadata=captured)
                assert any(key == "swarm-auth-bin" for key, _ in await call.initial_metadata())  # node one answered
                call.cancel()
            # ... replayed where it was not meant to go
            if attack == "Info at another node":
                return await failure(to_two.Info(pb.InfoRequest(), metadata=captured, timeout=5))
            if attack == "FetchFile at another node":
                return await failure(to_two.FetchFile(block, metadata=captured, timeout=5))
            if attack == "Session at another node":
                return await failure(to_two.Session(metadata=captured).read())
            if attack == "FetchFile for another file":
                return await failure(to_one.FetchFile(block, metadata=captured, timeout=5))
            return await failure(to_one.Health(pb.HealthRequest(), metadata=captured, timeout=5))

    code, details = asyncio.run(run())
    assert code == "UNAUTHENTICATED"
    if attack.endswith("another node"):
        assert f"credential was made for node {one.node_id}, not for this node {two.node_id}" in details
    else:
        method = "FetchFile" if attack.startswith("FetchFile") else "Health"
        assert f"credential was made for another request, not for this {method} call" in details
    assert "captured credential is good for nothing else" in details


def test_a_route_naming_no_node_id_is_refused_before_anything_is_held(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    first, last = cluster.start_chain(stories_package.root, SPANS)

    async def run() -> None:
        swarm = await AsyncSwarm.connect(cluster.addresses, discovery_timeout_s=1.0)
        try:
            route = list(swarm.route())
            route[1] = PeerView("", last.address, *SPANS[1])  # the next hop's credential needs its id
            session = RemoteSession(swarm.channels.get(first.address), route, swarm.package_id, 16, SamplingParams(),
                                    GenerationStats(), credentials=swarm.credentials)  # fmt: skip
            with pytest.raises(InvalidRequest, match="route hop 2 must name its node id"):
                await session.open(timeout=10)
            await session.close()
        finally:
            await swarm.close()

    asyncio.run(run())
    assert not first.sessions.sessions and not last.sessions.sessions


# --- limits count the client, not the relay ---------------------------------------------------------


async def generate(swarm: AsyncSwarm, tokens: int = 20) -> list[int]:
    request = GenerationRequest(tuple(STORIES_PROMPT_IDS), tokens)
    return [t async for t in swarm.text.generate_ids(request, GenerationStats())]


def test_one_client_cannot_take_more_than_its_share_downstream_through_a_relay(
    cluster: LocalCluster, stories_package: ModelPackage
) -> None:
    relay, downstream = cluster.start_chain(stories_package.root, SPANS, max_sessions_per_peer=3)
    admitted = downstream.servicer.admission.sessions

    async def run() -> None:
        greedy = await AsyncSwarm.connect(cluster.addresses, swarm_key=TEST_SWARM_KEY, discovery_timeout_s=1.0)
        others = [await AsyncSwarm.connect(cluster.addresses, swarm_key=TEST_SWARM_KEY, discovery_timeout_s=1.0)
                  for _ in range(4)]  # fmt: skip
        assert greedy.credentials is not None
        me = greedy.credentials.node_id
        held: list[RemoteSession] = []
        try:
            for _ in range(3):  # its whole share, through the relay
                request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 8)
                held.append(await greedy.open_session(request, GenerationStats()))
            assert all([p.node_id for p in s.route] == [relay.node_id, downstream.node_id] for s in held)
            # while it holds its share, four other clients generate through the same relay, two at a time each
            results = await asyncio.gather(*(generate(o) for o in others for _ in range(2)))
            assert results == [STORIES_REFERENCE_IDS[:20]] * 8
            # a fourth, straight to the downstream node: that node counted the relayed three against it
            route = [p for p in greedy.peers if p.node_id == downstream.node_id]
            direct = RemoteSession(greedy.channels.get(downstream.address), route, greedy.package_id, 8,
                                   SamplingParams(), GenerationStats(), credentials=greedy.credentials)  # fmt: skip
            with pytest.raises(CapacityExceeded, match=f"{me} already holds 3 sessions here"):
                await direct.open(timeout=10)
            await direct.close()
            assert (admitted.held(me), admitted.held(relay.node_id)) == (3, 0)  # counted against it, not the relay
        finally:
            for session in held:
                await session.close()
            for swarm in [greedy, *others]:
                await swarm.close()

    asyncio.run(run())
    assert wait_until(lambda: not downstream.sessions.sessions and admitted.held(relay.node_id) == 0)


# --- open swarms: a peer is its host ------------------------------------------------------------------


def test_open_swarm_call_rates_hold_across_reconnects(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root, swarm_key=None, max_calls_per_s=5)

    async def run() -> list[str]:
        codes = []
        for _ in range(20):  # every call on a connection of its own: a new source port each time
            async with grpc.aio.insecure_channel(node.address, options=FRESH_CONNECTION) as channel:
                codes.append((await failure(pb_grpc.SwarmNodeStub(channel).Health(pb.HealthRequest(), timeout=5)))[0])
        return codes

    codes = asyncio.run(run())
    assert codes[:10] == ["OK"] * 10 and "RESOURCE_EXHAUSTED" in codes[10:]


def test_open_swarm_session_limits_hold_across_reconnects(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root, swarm_key=None, max_sessions_per_peer=1)
    route = [PeerView(node.node_id, node.address, 0, stories_package.manifest.num_layers)]

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            connect = [grpc.aio.insecure_channel(node.address, options=FRESH_CONNECTION) for _ in range(2)]
            channels = [await stack.enter_async_context(channel) for channel in connect]
            sessions = [RemoteSession(c, route, stories_package.package_id, 16, SamplingParams(), GenerationStats())
                        for c in [*channels, channels[1]]]  # fmt: skip
            await sessions[0].open(timeout=10)
            with pytest.raises(CapacityExceeded, match=r"ipv4:127\.0\.0\.1 already holds 1 sessions here"):
                await sessions[1].open(timeout=10)  # the same host on another connection
            await sessions[0].close()
            assert wait_until(lambda: not node.sessions.sessions)
            await sessions[2].open(timeout=10)  # its share is free again
            assert await sessions[2].step(STORIES_PROMPT_IDS, SamplingParams()) == STORIES_REFERENCE_IDS[0]
            for session in sessions:
                await session.close()

    asyncio.run(run())


# --- undecodable messages ------------------------------------------------------------------------------


def test_undecodable_messages_get_invalid_argument_and_one_warning(
    cluster: LocalCluster, stories_package: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    node = cluster.start(stories_package.root)
    whole = pb.FetchFileRequest(package_id=stories_package.package_id, file="manifest.json").SerializeToString()
    truncated = whole[:-5]

    async def run() -> list[tuple[str, str]]:
        outcomes = []
        async with grpc.aio.insecure_channel(node.address) as channel:  # raw bytes: no serializers
            info = channel.unary_unary("/swarm.v1.SwarmNode/Info")
            fetch = channel.unary_stream("/swarm.v1.SwarmNode/FetchFile")
            session = channel.stream_stream("/swarm.v1.SwarmNode/Session")
            for garbage in (b"\xff\xff\xff\xff", truncated):
                outcomes.append(await failure(info(garbage, metadata=member_metadata("Info", node.node_id), timeout=5)))
                outcomes.append(await failure(fetch(garbage, metadata=member_metadata("FetchFile", node.node_id),
                                                    timeout=5)))  # fmt: skip
                handshake = member_credentials().call("Session", node.node_id, x_public=new_exchange()[1])[0]
                call = session(metadata=handshake, timeout=5)
                await call.write(garbage)
                outcomes.append(await failure(call.read()))
            stub = pb_grpc.SwarmNodeStub(channel)  # and the node goes on serving
            served = await stub.Info(pb.InfoRequest(), metadata=member_metadata("Info", node.node_id, pb.InfoRequest()))
            assert served.node_id == node.node_id
        return outcomes

    with caplog.at_level(logging.WARNING):
        outcomes = asyncio.run(run())
    assert [code for code, _ in outcomes] == ["INVALID_ARGUMENT"] * 6
    for (_, details), method in zip(outcomes, ["Info", "FetchFile", "Session"] * 2, strict=True):
        assert details.startswith(f"could not decode the {method} message: Error parsing message"), details
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # six bad messages, one line: the rest wait their turn
    assert lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert lines[0].getMessage().startswith("undecodable Info message from ipv4:127.0.0.1 (4 bytes)")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR] and "Traceback" not in caplog.text
