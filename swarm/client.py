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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from swarm._loop import BackgroundLoop
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.errors import InvalidPackage, NoRouteError, PeerUnavailable, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.package import Manifest
from swarm.remote import RemoteSession
from swarm.routing import PeerView, plan_route
from swarm.textgen import SyncTextGenerator, TextGenerator
from swarm.tokenizer import TextCodec
from swarm.transport import error_from_rpc, insecure_channel

MAX_PEERS = 256  # nodes a client will learn of through gossip


@dataclass(frozen=True)
class ClientConfig:
    peers: tuple[str, ...] = ()  # host:port of nodes to start from
    model_id: str | None = None  # package id (or a prefix) when peers serve several models
    connect_timeout_s: float = 10.0  # per peer, for Info and metadata
    step_timeout_s: float = 120.0  # a whole route must answer one step within this


class AsyncSwarm:
    """Async SDK. `await AsyncSwarm.connect(peers=[...])`, then generate / stream / chat."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.peers: list[PeerView] = []
        self.manifest: Manifest | None = None
        self.package_id = ""
        self._text: TextGenerator | None = None

    @classmethod
    async def connect(cls, peers: Sequence[str] = (), **options: Any) -> AsyncSwarm:
        swarm = cls(ClientConfig(peers=tuple(peers), **options))
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

    async def _info(self, address: str) -> pb.NodeInfo | None:
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        try:
            return await stub.Info(pb.InfoRequest(), timeout=self.config.connect_timeout_s)
        except grpc.aio.AioRpcError:
            return None

    async def _peers_of(self, address: str) -> list[str]:
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        try:
            reply = await stub.Peers(pb.PeersRequest(), timeout=self.config.connect_timeout_s)
        except grpc.aio.AioRpcError:
            return []
        return [a for a in reply.addresses[:MAX_PEERS] if 0 < len(a) <= 255]

    async def _known_addresses(self) -> list[str]:
        """The given peers and every node they know of, transitively (bounded)."""
        known = list(dict.fromkeys(self.config.peers))
        frontier = known
        while frontier and len(known) < MAX_PEERS:
            found = await asyncio.gather(*(self._peers_of(a) for a in frontier))
            frontier = [a for a in dict.fromkeys(x for f in found for x in f) if a not in known]
            known += frontier[: MAX_PEERS - len(known)]
        return known

    async def refresh(self) -> None:
        """Ask every known peer what it serves; learn the model from one of them."""
        if not self.config.peers:
            raise NoRouteError("no peers given; pass peers=['host:port', ...]")
        addresses = await self._known_addresses()
        infos = await asyncio.gather(*(self._info(a) for a in addresses))
        live = [(a, i) for a, i in zip(addresses, infos, strict=True) if i is not None]
        if not live:
            raise PeerUnavailable(f"none of the peers answered: {', '.join(self.config.peers)}")
        package_id = self._choose_model([i for _, i in live])
        self.peers = [
            PeerView(i.node_id, address, i.start, i.end, i.sessions, i.max_sessions)
            for address, i in live
            if i.package_id == package_id
        ]
        if package_id != self.package_id:
            await self._load_model(package_id, next(a for a, i in live if i.package_id == package_id))

    def _choose_model(self, infos: list[pb.NodeInfo]) -> str:
        ids = sorted({i.package_id for i in infos})
        wanted = self.config.model_id
        if wanted:
            ids = [i for i in ids if i.startswith(wanted)]
            if not ids:
                raise NoRouteError(f"no peer serves model {wanted}")
        if len(ids) > 1:
            raise NoRouteError(f"peers serve several models ({', '.join(i[:12] for i in ids)}); choose with model_id")
        return ids[0]

    async def _load_model(self, package_id: str, address: str) -> None:
        stub = pb_grpc.SwarmNodeStub(self._channel(address))
        try:
            meta = await stub.GetPackageMeta(pb.PackageMetaRequest(), timeout=self.config.connect_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, address) from exc
        manifest = Manifest.from_dict(json.loads(meta.manifest_json))
        if manifest.package_id != package_id:
            raise InvalidPackage(f"{address} sent a manifest that does not match its model id")
        if hashlib.sha256(meta.tokenizer_json).hexdigest() != manifest.tokenizer.sha256:
            raise InvalidPackage(f"{address} sent a tokenizer that does not match the manifest")
        codec = TextCodec.from_json(meta.tokenizer_json.decode(), manifest.tokenizer)
        self.manifest, self.package_id = manifest, package_id
        self._text = TextGenerator(manifest, codec, self._open_stepper)

    def route(self) -> list[PeerView]:
        assert self.manifest is not None
        return plan_route(self.peers, self.manifest.num_layers)

    @asynccontextmanager
    async def _open_stepper(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[RemoteSession]:
        route = self.route()
        session = RemoteSession(
            self._channel(route[0].address),
            route,
            self.package_id,
            request.total_tokens,
            request.sampling,
            stats,
            self.config.step_timeout_s,
        )
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
