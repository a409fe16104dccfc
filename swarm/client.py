"""The SDK: `Swarm(peers=[...])` and its async twin `AsyncSwarm`.

from swarm import Swarm
with Swarm(peers=["192.168.1.20:7000"]) as model:
    print(model.generate("Once upon a time", max_tokens=40))
    for piece in model.stream_chat([{"role": "user", "content": "Hi!"}]):
        print(piece, end="")
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc

from swarm._loop import BackgroundLoop
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import ANY_NODE, Credentials, check_manifest_signature
from swarm.discovery import MdnsBrowser, env_mdns_interfaces, open_zeroconf
from swarm.errors import AuthenticationError, InvalidPackage, NoRouteError, PeerUnavailable, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.keys import Identity, SwarmKey, load_swarm_key
from swarm.membership import Event, PeerGone, PeerRecord, PeerSeen
from swarm.package import Manifest
from swarm.recovery import Bans, RecoveringSession
from swarm.remote import RemoteSession
from swarm.routing import PeerView, plan_route
from swarm.textgen import SyncTextGenerator, TextGenerator
from swarm.tokenizer import TextCodec
from swarm.transport import error_from_rpc, insecure_channel, unary, unary_from

MAX_PEERS = 256  # nodes a client will learn of through gossip


@dataclass(frozen=True)
class ClientConfig:
    peers: tuple[str, ...] = ()  # host:port of nodes to start from
    model_id: str | None = None  # package id (or a prefix) when peers serve several models
    connect_timeout_s: float = 10.0  # per peer, for Info and metadata
    mdns: bool = True  # with no peers given, find the swarm on the local network
    mdns_interfaces: tuple[str, ...] = ()  # interface addresses to browse on; () = all IPv4
    discovery_timeout_s: float = 5.0  # how long to look for a complete swarm
    step_timeout_s: float = 120.0  # deadline for a step before any step time was measured
    min_step_deadline_s: float = 2.0  # later deadlines follow measured step times, never below this
    open_deadline_s: float = 5.0  # opening a session along a route (allocating its caches) takes less
    max_recoveries: int = 8  # reroutes one step may need before the generation fails
    recovery_wait_s: float = 30.0  # how long to wait for the swarm to cover lost layers again
    swarm_key: SwarmKey | None = None  # membership secret; None = an open swarm
    node_loop: bool = True  # the first node feeds each token back itself: one link fewer per token


async def discover(config: ClientConfig, credentials: Credentials | None = None) -> list[str]:
    """Addresses of swarm nodes announced on the local network, once some cover every layer
    of one model or the discovery timeout passes. Only records signed for our swarm count."""
    if credentials is None and config.swarm_key is not None:
        credentials = Credentials(config.swarm_key, Identity.generate())
    records: dict[str, PeerRecord] = {}

    def seen(event: Event) -> None:
        if isinstance(event, PeerSeen) and not event.record.draining:
            records[event.record.node_id] = event.record
        elif isinstance(event, PeerGone):
            records.pop(event.node_id, None)

    zeroconf = open_zeroconf(config.mdns_interfaces)
    browser = MdnsBrowser(zeroconf, seen, credentials=credentials)
    try:
        await browser.start()
        deadline = asyncio.get_running_loop().time() + config.discovery_timeout_s
        while asyncio.get_running_loop().time() < deadline and not _complete(records.values(), config.model_id):
            await asyncio.sleep(0.1)
    finally:
        await browser.stop()
        await zeroconf.async_close()
    return [r.address for r in records.values()]


def _complete(records: Iterable[PeerRecord], model_id: str | None) -> bool:
    by_model: dict[str, list[PeerRecord]] = {}
    for r in records:
        if model_id is None or r.package_id.startswith(model_id):
            by_model.setdefault(r.package_id, []).append(r)
    for group in by_model.values():
        try:
            plan_route([r.view() for r in group], max(r.end for r in group))
        except NoRouteError:
            continue
        return True
    return False


class AsyncSwarm:
    """Async SDK. `await AsyncSwarm.connect(peers=[...])`, then generate / stream / chat."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.peers: list[PeerView] = []
        self.manifest: Manifest | None = None
        self.package_id = ""
        self._text: TextGenerator | None = None
        self._in_flight: dict[str, int] = {}  # node id -> this client's open sessions through it
        self._known: list[str] = []  # every node address learned so far
        self._node_ids: dict[str, str] = {}  # address -> the node that last answered there (authenticated)
        self.bans = Bans()
        self._refused: list[SwarmError] = []  # peers that answered, but refused our credential
        # a client's identity lives as long as the client: it is not an address anyone routes to
        self.credentials = Credentials(config.swarm_key, Identity.generate()) if config.swarm_key else None

    @classmethod
    async def connect(
        cls, peers: Sequence[str] = (), swarm_key: str | SwarmKey | None = None, **options: Any
    ) -> AsyncSwarm:
        """`swarm_key`: a join code, a key file or a SwarmKey; by default $SWARM_KEY or the key
        file `swarm-node init` wrote, and an open swarm when there is neither. mDNS looks on
        `mdns_interfaces`, by default those in $SWARM_MDNS_INTERFACES, else every IPv4 interface."""
        key = swarm_key if isinstance(swarm_key, SwarmKey) else load_swarm_key(swarm_key)
        options.setdefault("mdns_interfaces", env_mdns_interfaces())  # as the CLIs: else every IPv4 interface
        swarm = cls(ClientConfig(peers=tuple(peers), swarm_key=key, **options))
        try:
            await swarm.refresh()
        except BaseException:
            await swarm.close()
            raise
        return swarm

    @property
    def text(self) -> TextGenerator:
        if self._text is None:
            raise SwarmError("not connected; use AsyncSwarm.connect(...)")
        return self._text

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = insecure_channel(address)
        return self._channels[address]

    async def _probe(self, address: str) -> str:
        """The node id of whoever answers at `address`: an Info to any node, the one call made
        before the caller knows who it is talking to (docs/SECURITY.md); every later call names it."""
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        info, proof = await unary_from(stub.Info, "Info", pb.InfoRequest(), self.credentials,
                                       self.config.connect_timeout_s, ANY_NODE)  # fmt: skip
        node_id = proof.node_id if proof is not None else info.node_id
        if info.node_id != node_id:
            raise PeerUnavailable(f"{address} answers as node {node_id} but says it is {info.node_id}")
        self._node_ids[address] = node_id
        return node_id

    async def _info(self, address: str) -> tuple[pb.NodeInfo, float] | None:
        """The peer's Info and the round trip it took, in ms."""
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        timeout = self.config.connect_timeout_s
        try:
            node_id = await self._probe(address)  # connects first, and learns who answers there
            round_trips = []
            for _ in range(3):  # the quickest of a few: one round trip alone is noisy
                started = time.perf_counter()
                info = await unary(stub.Info, "Info", pb.InfoRequest(), self.credentials, timeout, node_id)
                round_trips.append((time.perf_counter() - started) * 1000)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._refused.append(error_from_rpc(exc, address))
            return None
        except SwarmError:  # it failed authentication: not one of ours
            return None
        return info, min(round_trips)

    async def _peers_of(self, address: str) -> list[str]:
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        node_id = self._node_ids.get(address)
        if node_id is None:  # it never answered us
            return []
        try:
            reply = await unary(stub.Peers, "Peers", pb.PeersRequest(), self.credentials,
                                self.config.connect_timeout_s, node_id)  # fmt: skip
        except (grpc.aio.AioRpcError, SwarmError):
            return []
        return [a for a in reply.addresses[:MAX_PEERS] if 0 < len(a) <= 255]

    async def _answers(self, addresses: list[str]) -> dict[str, tuple[pb.NodeInfo, float] | None]:
        """Each address's Info and round trip (None: no answer), and the same for every node they
        know of, transitively (bounded): gossip is asked of the peers that answered."""
        answers = dict(zip(addresses, await asyncio.gather(*(self._info(a) for a in addresses)), strict=True))
        frontier = [a for a in addresses if answers[a] is not None]
        while frontier and len(answers) < MAX_PEERS:
            found = await asyncio.gather(*(self._peers_of(a) for a in frontier))
            new = [a for a in dict.fromkeys(x for f in found for x in f) if a not in answers]
            new = new[: MAX_PEERS - len(answers)]
            answers |= dict(zip(new, await asyncio.gather(*(self._info(a) for a in new)), strict=True))
            frontier = [a for a in new if answers[a] is not None]
        return answers

    async def refresh(self, rediscover: bool = True) -> None:
        """Ask every known peer what it serves; learn the model from one of them.

        `rediscover=False` skips the mDNS wait and asks the peers already known (and theirs)."""
        if not self.config.peers and not self.config.mdns:
            nothing = "no peers given and mDNS discovery is off"
            raise NoRouteError(f"{nothing}; pass peers=['host:port', ...]", cli=f"{nothing}; give --peer HOST:PORT")
        found = await discover(self.config, self.credentials) if rediscover and not self.config.peers else []
        self._refused = []
        answers = await self._answers(list(dict.fromkeys([*self.config.peers, *self._known, *found])))
        addresses = list(answers)
        self._known = list(dict.fromkeys([*self._known, *addresses]))[:MAX_PEERS]
        live = [(a, answer[0]) for a, answer in answers.items() if answer is not None]
        latency = {a: answer[1] for a, answer in answers.items() if answer is not None}
        if not live:
            if not addresses:
                none = (f"found no swarm on the local network within {self.config.discovery_timeout_s:g}s; "
                        "start nodes with `swarm-node join`, or")  # fmt: skip
                raise NoRouteError(f"{none} pass peers=['host:port']", cli=f"{none} give --peer HOST:PORT")
            if self._refused:  # they answered, but not to us
                raise self._refused[0]
            raise PeerUnavailable(f"none of the peers answered: {', '.join(addresses)}")
        package_id = self._choose_model([i for _, i in live])
        self.peers = [
            PeerView(i.node_id, address, i.start, i.end, i.sessions, i.max_sessions,
                     step_ms=1000 / i.steps_per_s if i.steps_per_s > 0 else 0.0, latency_ms=latency[address],
                     machine=i.machine)
            for address, i in live
            if i.package_id == package_id
        ]  # fmt: skip
        if package_id != self.package_id:
            await self._load_model(package_id, next((a, i.node_id) for a, i in live if i.package_id == package_id))

    def _choose_model(self, infos: list[pb.NodeInfo]) -> str:
        ids = sorted({i.package_id for i in infos})
        wanted = self.config.model_id
        if wanted:
            ids = [i for i in ids if i.startswith(wanted)]
            if not ids:
                raise NoRouteError(f"no peer serves model {wanted}")
        if len(ids) > 1:
            several = f"peers serve several models ({', '.join(i[:12] for i in ids)}); choose one with"
            raise NoRouteError(f"{several} model_id='...'", cli=f"{several} --model-id ID")
        return ids[0]

    async def _load_model(self, package_id: str, source: tuple[str, str]) -> None:
        address, node_id = source
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        meta = await fetch_package_meta(stub, address, node_id, self.credentials, self.config.connect_timeout_s)
        manifest = Manifest.from_dict(json.loads(meta.manifest_json))
        if manifest.package_id != package_id:
            raise InvalidPackage(f"{address} sent a manifest that does not match its model id")
        if hashlib.sha256(meta.tokenizer_json).hexdigest() != manifest.tokenizer.sha256:
            raise InvalidPackage(f"{address} sent a tokenizer that does not match the manifest")
        codec = TextCodec.from_json(meta.tokenizer_json.decode(), manifest.tokenizer)
        self.manifest, self.package_id = manifest, package_id
        self._text = TextGenerator(manifest, codec, self._open_stepper)

    def route(self, machines: Sequence[str] = ()) -> list[PeerView]:
        """The best route now, around banned nodes, counting this client's sessions on each peer;
        with `machines` (a replay), on the machines that computed each layer where it can be."""
        assert self.manifest is not None
        mine, banned = self._in_flight, self.bans.banned(time.monotonic())
        peers = [
            replace(p, sessions=p.sessions + mine.get(p.node_id, 0)) for p in self.peers if p.node_id not in banned
        ]
        return plan_route(peers, self.manifest.num_layers, machines)

    async def open_session(
        self,
        request: GenerationRequest,
        stats: GenerationStats,
        route: list[PeerView] | None = None,
        timeout_s: float | None = None,
    ) -> RemoteSession:
        """A session opened along `route` (default: the best now). No recovery: see RecoveringSession."""
        route = route or self.route()
        session = RemoteSession(self._channel(route[0].address), route, self.package_id, request.total_tokens,
                                request.sampling, stats, self.config.step_timeout_s,
                                credentials=self.credentials)  # fmt: skip
        for peer in route:
            self._in_flight[peer.node_id] = self._in_flight.get(peer.node_id, 0) + 1
        session.on_close = self._release
        try:
            await session.open(timeout_s)
        except BaseException:
            await session.close()
            raise
        return session

    def _release(self, route: list[PeerView]) -> None:
        for peer in route:
            self._in_flight[peer.node_id] -= 1

    async def unresponsive(self, peers: Sequence[PeerView], timeout_s: float = 1.0) -> set[str]:
        """The node ids of the `peers` that do not answer a health check in time."""

        async def silent(peer: PeerView) -> bool:
            stub = pb_grpc.SwarmNodeStub(self._channel(peer.address))
            try:
                await unary(stub.Health, "Health", pb.HealthRequest(), self.credentials, timeout_s, peer.node_id)
            except (grpc.aio.AioRpcError, SwarmError):
                return True
            return False

        answers = await asyncio.gather(*(silent(p) for p in peers))
        return {p.node_id for p, quiet in zip(peers, answers, strict=True) if quiet}

    @asynccontextmanager
    async def _open_stepper(
        self, request: GenerationRequest, stats: GenerationStats
    ) -> AsyncIterator[RecoveringSession]:
        session = RecoveringSession(self, request, stats)
        try:
            await session.open()
            yield session
        finally:
            await session.close()

    # the text API, forwarded to the core
    def stream(self, prompt: str, max_tokens: int = 128, **options: Any) -> AsyncIterator[str]:
        return self.text.stream(prompt, max_tokens, **options)

    def stream_chat(
        self, messages: Sequence[dict[str, str]], max_tokens: int = 256, **options: Any
    ) -> AsyncIterator[str]:
        return self.text.stream_chat(messages, max_tokens, **options)

    async def generate(self, prompt: str, max_tokens: int = 128, **options: Any) -> str:
        return await self.text.generate(prompt, max_tokens, **options)

    async def chat(self, messages: Sequence[dict[str, str]], max_tokens: int = 256, **options: Any) -> str:
        return await self.text.chat(messages, max_tokens, **options)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def fetch_package_meta(stub: pb_grpc.SwarmNodeStub, address: str, node_id: str, credentials: Credentials | None,
                             timeout: float) -> pb.PackageMeta:  # fmt: skip
    """The manifest and tokenizer node `node_id` serves; in a keyed swarm, signed by that (authenticated) node."""
    try:
        meta, signer = await unary_from(stub.GetPackageMeta, "GetPackageMeta", pb.PackageMetaRequest(), credentials,
                                        timeout, node_id)  # fmt: skip
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc, address) from exc
    except AuthenticationError as exc:
        raise InvalidPackage(f"{address} failed authentication: {exc}") from exc
    if signer is not None:
        check_manifest_signature(meta.manifest_json, meta.manifest_signature, signer)
    return meta


class Swarm(SyncTextGenerator):
    """Blocking SDK over `AsyncSwarm`: generate, stream, chat, stream_chat, generate_ids."""

    def __init__(self, peers: Sequence[str] = (), **options: Any) -> None:
        loop = BackgroundLoop("swarm-client")
        try:
            self.swarm = loop.run(AsyncSwarm.connect(peers, **options))
        except BaseException:
            loop.close()
            raise
        super().__init__(self.swarm.text, loop)

    def close(self) -> None:
        self._loop.run(self.swarm.close())
        super().close()
