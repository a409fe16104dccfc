"""An authenticated swarm on 127.0.0.1: who may join, open sessions, read and inject frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from node.config import NodeConfig
from node.join import prepare
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials
from swarm.client import AsyncSwarm
from swarm.discovery import MdnsBrowser, open_zeroconf
from swarm.environment import SWARM_KEY_ENV
from swarm.errors import AuthenticationError, CapacityExceeded, NoRouteError, PeerUnavailable
from swarm.frames import SealedFrames
from swarm.generation import GenerationRequest, GenerationStats
from swarm.keys import Identity, SwarmKey
from swarm.membership import Event, PeerSeen
from swarm.package import ModelPackage
from swarm.remote import RemoteSession
from swarm.routing import PeerView
from swarm.sampling import SamplingParams
from swarm.tensors import to_wire
from swarm.transport import open_session_call, request_bytes
from tests.conftest import REPO, STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS
from tests.helpers import TEST_SWARM_KEY, LocalCluster, member_credentials, member_metadata, token_step, wait_until

SPANS = [(0, 2), (2, 5)]
OTHER_KEY = SwarmKey(bytes(32))
LOOPBACK = ("127.0.0.1",)


async def connect(addresses: list[str], key: SwarmKey | None) -> AsyncSwarm:
    return await AsyncSwarm.connect(addresses, swarm_key=key, discovery_timeout_s=1.0)


def test_members_generate_the_reference(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    cluster.start_chain(stories_package.root, SPANS)

    async def run() -> list[int]:
        swarm = await connect(cluster.addresses, TEST_SWARM_KEY)
        try:
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 40)
            return [t async for t in swarm.text.generate_ids(request, GenerationStats())]
        finally:
            await swarm.close()

    assert asyncio.run(run()) == STORIES_REFERENCE_IDS


@pytest.mark.parametrize("key", [None, OTHER_KEY], ids=["no key", "another swarm's key"])
def test_a_client_outside_the_swarm_is_refused(
    cluster: LocalCluster, stories_package: ModelPackage, key: SwarmKey | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SWARM_KEY_ENV)
    cluster.start_chain(stories_package.root, SPANS)
    with pytest.raises(AuthenticationError, match="refused us"):
        asyncio.run(connect(cluster.addresses, key))


REQUESTS: dict[str, Message] = {
    "Info": pb.InfoRequest(), "Health": pb.HealthRequest(), "Peers": pb.PeersRequest(),
    "GetPackageMeta": pb.PackageMetaRequest(),
}  # fmt: skip


def unary_call(name: str) -> Callable[[pb_grpc.SwarmNodeStub, object], Awaitable[object]]:
    return lambda stub, metadata: getattr(stub, name)(REQUESTS[name], metadata=metadata, timeout=5)


METHODS = {name: unary_call(name) for name in REQUESTS}


def manifest_request(package: ModelPackage, file: str = "manifest.json") -> pb.FetchFileRequest:
    return pb.FetchFileRequest(package_id=package.package_id, file=file)


async def fetch_all(stub: pb_grpc.SwarmNodeStub, metadata: object, request: pb.FetchFileRequest) -> bytes:
    call = stub.FetchFile(request, metadata=metadata)
    return b"".join([chunk.data async for chunk in call])


async def session_reply(stub: pb_grpc.SwarmNodeStub, metadata: object) -> object:
    call = stub.Session(metadata=metadata)
    return await call.read()  # a node refusing the caller ends the call before any message


async def ended_with(call: grpc.aio.StreamStreamCall) -> tuple[str, str]:
    """The status a node ended a session stream with, after our last write."""
    with contextlib.suppress(grpc.aio.AioRpcError):  # the node may end it with the read in flight
        assert await call.read() == grpc.aio.EOF
    return (await call.code()).name, await call.details() or ""


@pytest.mark.parametrize("who", ["no credential", "another swarm", "member"])
def test_every_call_needs_a_member_credential(cluster: LocalCluster, stories_package: ModelPackage, who: str) -> None:
    node = cluster.start(stories_package.root)
    outsider = Credentials(OTHER_KEY, Identity.generate())

    fetch = manifest_request(stories_package)

    def metadata(method: str, request: Message | None) -> object:
        body = request_bytes(request) if request is not None else b""
        return None if who == "no credential" else outsider.call(method, node.node_id, body)[0] \
            if who == "another swarm" else member_metadata(method, node.node_id, request)  # fmt: skip

    async def run() -> dict[str, str]:
        outcomes = {}
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb_grpc.SwarmNodeStub(channel)
            calls = {name: call(stub, metadata(name, REQUESTS[name])) for name, call in METHODS.items()}
            calls["FetchFile"] = fetch_all(stub, metadata("FetchFile", fetch), fetch)
            for name, pending in calls.items():
                try:
                    await pending
                    outcomes[name] = "OK"
                except grpc.aio.AioRpcError as exc:
                    outcomes[name] = exc.code().name
            try:
                await session_reply(stub, metadata("Session", None))
                outcomes["Session"] = "OK"
            except grpc.aio.AioRpcError as exc:
                outcomes["Session"] = exc.code().name
        return outcomes

    outcomes = asyncio.run(run())
    if who == "member":
        assert outcomes == {**dict.fromkeys([*METHODS, "FetchFile"], "OK"), "Session": "UNAUTHENTICATED"}
    else:
        assert outcomes == dict.fromkeys([*METHODS, "FetchFile", "Session"], "UNAUTHENTICATED")


def test_a_replayed_credential_is_refused(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root)

    async def run() -> None:
        metadata = member_metadata("Info", node.node_id, pb.InfoRequest())
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb_grpc.SwarmNodeStub(channel)
            await stub.Info(pb.InfoRequest(), metadata=metadata, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Info(pb.InfoRequest(), metadata=metadata, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "replay" in (refused.value.details() or "")

    asyncio.run(run())


def test_a_node_outside_the_swarm_cannot_join_or_serve(cluster: LocalCluster, stories_package: ModelPackage,
                                                      tmp_path: Path) -> None:  # fmt: skip
    member = cluster.start(stories_package.root, SPANS[0])
    stranger = cluster.start(stories_package.root, SPANS[1], swarm_key=OTHER_KEY)
    # it cannot fetch blocks: no member answers it
    config = NodeConfig(model=None, host="127.0.0.1", peers=(member.address,), mdns=False, cache_dir=tmp_path,
                        swarm_key=OTHER_KEY)  # fmt: skip
    with pytest.raises(NoRouteError, match="found no swarm"):
        cluster.loop.run(prepare(config, quiet=True))
    assert not any(tmp_path.rglob("*.onnx"))

    async def run() -> None:
        swarm = await connect([member.address, stranger.address], TEST_SWARM_KEY)
        try:
            assert [p.node_id for p in swarm.peers] == [member.node_id]  # it did not prove membership
            with pytest.raises(NoRouteError):
                swarm.route()
            # a route through it anyway: the member refuses to hand it the session
            route = [swarm.peers[0], PeerView(stranger.node_id, stranger.address, 2, 5)]
            session = RemoteSession(swarm.channels.get(member.address), route, swarm.package_id, 16, SamplingParams(),
                                    GenerationStats(), credentials=swarm.credentials)  # fmt: skip
            with pytest.raises(PeerUnavailable, match=r"failed authentication|refused") as failed:
                await session.open(timeout=10)
            assert getattr(failed.value, "node_id", None) == stranger.node_id  # blamed, so it gets banned
            await session.close()
        finally:
            await swarm.close()

    asyncio.run(run())


# --- frames on a live session ------------------------------------------------------------------


def open_request(package: ModelPackage, node_id: str, address: str) -> pb.SessionRequest:
    route = [pb.Hop(address=address, node_id=node_id, start=0, end=5)]
    return pb.SessionRequest(open=pb.OpenSession(
        protocol_version=pb.PROTOCOL_VERSION_CURRENT, session_id="s1", package_id=package.package_id, route=route,
        max_length=32, sampling=pb.Sampling()))  # fmt: skip


@pytest.mark.parametrize("attack", ["replay", "alter", "inject", "plain"])
def test_frames_replayed_altered_or_injected_are_rejected(cluster: LocalCluster, stories_package: ModelPackage,
                                                         attack: str) -> None:  # fmt: skip
    node = cluster.start(stories_package.root)

    async def run() -> tuple[str, str, int]:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb_grpc.SwarmNodeStub(channel)
            call, frames = await open_session_call(stub, member_credentials(), node.address, node.node_id, 10)
            assert isinstance(frames, SealedFrames)
            await call.write(frames.seal(open_request(stories_package, node.node_id, node.address)))
            assert frames.open(await call.read()).WhichOneof("kind") == "opened"
            first = frames.seal(token_step(STORIES_PROMPT_IDS))
            await call.write(first)
            token = frames.open(await call.read()).result.token
            follow = frames.seal(token_step([token], len(STORIES_PROMPT_IDS), step=1))
            if attack == "replay":  # the captured first step, again
                bad = first
            elif attack == "alter":  # the real next frame with one bit flipped
                box = bytearray(follow.sealed.box)
                box[len(box) // 2] ^= 1
                bad = pb.SessionRequest(sealed=pb.Sealed(seq=follow.sealed.seq, box=bytes(box)))
            elif attack == "inject":  # made by a member of the swarm, but not of this session
                _, other = await open_session_call(stub, member_credentials(), node.address, node.node_id)
                for _ in range(follow.sealed.seq):
                    other.seal(follow)  # so its frame carries the sequence number the node expects
                bad = other.seal(token_step([token], len(STORIES_PROMPT_IDS), step=1))
            else:
                bad = token_step([token], len(STORIES_PROMPT_IDS), step=1)
            await call.write(bad)
            return *(await ended_with(call)), token

    code, details, token = asyncio.run(run())
    assert token == STORIES_REFERENCE_IDS[0]
    assert code == "UNAUTHENTICATED"
    expected = {"replay": "out of sequence", "alter": "failed authentication", "inject": "failed authentication",
                "plain": "not sealed"}[attack]  # fmt: skip
    assert expected in details
    assert wait_until(lambda: not node.sessions.sessions)  # the session was closed, its cache freed




# --- bounds -------------------------------------------------------------------------------------


def test_nan_hidden_states_and_per_peer_limits(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    nodes = cluster.start_chain(stories_package.root, SPANS, max_sessions_per_peer=1)

    async def run() -> None:
        swarm = await connect(cluster.addresses, TEST_SWARM_KEY)
        try:
            first = await swarm.open_session(GenerationRequest(tuple(STORIES_PROMPT_IDS), 8), GenerationStats())
            with pytest.raises(CapacityExceeded, match="per peer"):
                await swarm.open_session(GenerationRequest(tuple(STORIES_PROMPT_IDS), 8), GenerationStats())
            await first.close()
            async with grpc.aio.insecure_channel(nodes[1].address) as channel:
                call, frames = await open_session_call(pb_grpc.SwarmNodeStub(channel), member_credentials(),
                                                       nodes[1].address, nodes[1].node_id)  # fmt: skip
                route = [pb.Hop(address=nodes[1].address, node_id=nodes[1].node_id, start=2, end=5)]
                await call.write(frames.seal(pb.SessionRequest(open=pb.OpenSession(
                    protocol_version=pb.PROTOCOL_VERSION_CURRENT, session_id="n", package_id=swarm.package_id,
                    route=route, max_length=8, sampling=pb.Sampling()))))  # fmt: skip
                frames.open(await call.read())
                hidden = np.full((1, 1, 64), np.nan, np.float32)
                await call.write(frames.seal(pb.SessionRequest(step=pb.Step(step=0, hidden=to_wire(hidden)))))
                code, details = await ended_with(call)
                assert code == "INVALID_ARGUMENT" and "NaN" in details
            request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 12)
            ids = [t async for t in swarm.text.generate_ids(request, GenerationStats())]
            assert ids == STORIES_REFERENCE_IDS[:12]  # still serving everyone
        finally:
            await swarm.close()

    asyncio.run(run())


def test_rate_limit_per_peer(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    node = cluster.start(stories_package.root, max_calls_per_s=5)

    async def run() -> list[str]:
        credentials = member_credentials()
        codes = []
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb_grpc.SwarmNodeStub(channel)
            for _ in range(20):
                try:
                    metadata = credentials.call("Health", node.node_id)[0]
                    await stub.Health(pb.HealthRequest(), metadata=metadata, timeout=5)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
            # another peer is not held back by the first one's flood
            await stub.Health(pb.HealthRequest(), metadata=member_metadata("Health", node.node_id), timeout=5)
        return codes

    codes = asyncio.run(run())
    assert codes[:10] == ["OK"] * 10 and "RESOURCE_EXHAUSTED" in codes[10:]


# --- discovery ------------------------------------------------------------------------------------


def seen_by(credentials: Credentials | None, wanted: str, linger_s: float = 1.5) -> set[str]:
    """Addresses a browser with `credentials` accepts: until `wanted` shows up, then a little longer."""
    found: set[str] = set()

    def on_event(event: Event) -> None:
        if isinstance(event, PeerSeen):
            found.add(event.record.address)

    async def browse() -> None:
        zeroconf = open_zeroconf(LOOPBACK)
        browser = MdnsBrowser(zeroconf, on_event, credentials=credentials)
        await browser.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while wanted and wanted not in found and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(linger_s)  # three announcements of every node
        await browser.stop()
        await zeroconf.async_close()

    asyncio.run(browse())
    return found


def test_discovery_ignores_records_of_other_swarms(cluster: LocalCluster, stories_package: ModelPackage) -> None:
    mdns = {"mdns": True, "mdns_interfaces": LOOPBACK, "announce_interval_s": 0.5}
    ours = cluster.start(stories_package.root, **mdns)
    theirs = cluster.start(stories_package.root, swarm_key=OTHER_KEY, **mdns)
    found = seen_by(member_credentials(), ours.address)
    assert ours.address in found and theirs.address not in found
    found_by_them = seen_by(Credentials(OTHER_KEY, Identity.generate()), theirs.address)
    assert theirs.address in found_by_them and ours.address not in found_by_them
    assert not seen_by(None, "", linger_s=1.0) & {ours.address, theirs.address}  # an open swarm sees neither


# --- the CLI ----------------------------------------------------------------------------------------


def run_node_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_init_creates_a_private_key_and_join_needs_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != SWARM_KEY_ENV} | {"XDG_CONFIG_HOME": str(tmp_path)}
    refused = run_node_cli("join", "--model", "nowhere", env=env)
    assert refused.returncode == 1 and "no swarm key: run `swarm-node init`" in refused.stderr
    assert "Traceback" not in refused.stderr
    made = run_node_cli("init", env=env)
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / "swarm" / "swarm.key"
    assert str(key_file) in made.stderr and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    code = made.stdout.strip()
    assert SwarmKey.from_code(code).join_code == code and key_file.read_text().strip() == code
    again = run_node_cli("init", env=env)
    assert again.returncode == 1 and "already exists" in again.stderr and key_file.read_text().strip() == code
    both = run_node_cli("join", "--insecure", "--swarm-key", code, env=env)
    assert both.returncode == 1 and "contradict" in both.stderr
    typo = run_node_cli("join", "--swarm-key", code[:-2] + "zz", env=env)
    assert typo.returncode == 1 and "mistyped" in typo.stderr
