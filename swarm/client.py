"""The SDK: `Swarm(peers=[...])` and its async twin `AsyncSwarm`.

from swarm import Swarm
with Swarm(peers=["192.168.1.20:7000"]) as model:
    print(model.generate("Once upon a time", max_tokens=40))
    for piece in model.stream_chat([{"role": "user", "content": "Hi!"}]):
        print(piece, end="")
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from swarm._loop import BackgroundLoop
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials
from swarm.config import ClientConfig
from swarm.discovery import discover
from swarm.environment import cache_dir, env_mdns_interfaces, load_swarm_key
from swarm.errors import InvalidRequest, NoRouteError, PeerUnavailable, SwarmError
from swarm.generation import GenerationRequest, GenerationStats, TokenStream
from swarm.keys import Identity, SwarmKey
from swarm.latency import ReturnPath
from swarm.local import LocalModel, model_drafter
from swarm.package import Manifest
from swarm.peers import PeerProbe, checked_manifest, only_model
from swarm.private import ClientEnds, PrivateStream
from swarm.private_files import FileSource, client_package
from swarm.recovery import Bans, RecoveringSession
from swarm.remote import RemoteSession
from swarm.routing import PeerView, plan_inner_route, plan_route
from swarm.sampling import SamplingParams
from swarm.speculative import LOOKUP, MAX_DRAFTS, Drafter, PromptLookup, check_same_tokenizer
from swarm.textgen import SyncTextGenerator, TextGenerator
from swarm.tokenizer import TextCodec
from swarm.transport import ChannelPool, unary
from swarm.verification import Verifier, check_verification


class AsyncSwarm:
    """Async SDK. `await AsyncSwarm.connect(peers=[...])`, then generate / stream / chat."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.channels = ChannelPool()
        self.peers: list[PeerView] = []
        self.manifest: Manifest | None = None
        self.package_id = ""
        self._text: TextGenerator | None = None
        self._in_flight: dict[str, int] = {}  # node id -> this client's open sessions through it
        self._draft_models: dict[str, LocalModel] = {}  # speculative=PKG: draft models this client runs
        self._ends: ClientEnds | None = None  # private sessions: the model's ends, run here
        # which steps verification checks: one stream for the client's life (seeded: reproducible
        # runs), so that its generations check different steps; never the sampling seed
        self._verify_rng = random.Random(config.verify_seed)
        self.bans = Bans()
        # a client's identity lives as long as the client: it is not an address anyone routes to
        self.credentials = Credentials(config.swarm_key, Identity.generate()) if config.swarm_key else None
        self.probe = PeerProbe(self.channels, self.credentials, config.connect_timeout_s)

    @classmethod
    async def connect(
        cls, peers: Sequence[str] = (), swarm_key: str | SwarmKey | None = None, **options: Any
    ) -> AsyncSwarm:
        """`swarm_key`: a join code, a key file or a SwarmKey; by default $SWARM_KEY or the key
        file `swarm-node init` wrote, and an open swarm when there is neither. mDNS looks on
        `mdns_interfaces`, by default those in $SWARM_MDNS_INTERFACES, else every IPv4 interface."""
        key = swarm_key if isinstance(swarm_key, SwarmKey) else load_swarm_key(swarm_key)
        options.setdefault("mdns_interfaces", env_mdns_interfaces())  # as the CLIs: else every IPv4 interface
        options.setdefault("private_cache", str(cache_dir()))
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

    async def refresh(self, rediscover: bool = True) -> None:
        """Ask every known peer what it serves; learn the model from one of them.

        `rediscover=False` skips the mDNS wait and asks the peers already known (and theirs)."""
        if not self.config.peers and not self.config.mdns:
            nothing = "no peers given and mDNS discovery is off"
            raise NoRouteError(f"{nothing}; pass peers=['host:port', ...]", cli=f"{nothing}; give --peer HOST:PORT")
        found = []
        if rediscover and not self.config.peers:
            found = await discover(self.config.mdns_interfaces, self.config.discovery_timeout_s, self.config.model_id,
                                   self.credentials)  # fmt: skip
        answers = await self.probe.survey([*self.config.peers, *self.probe.known, *found])
        addresses = list(answers)
        live = [(a, answer.info) for a, answer in answers.items() if answer is not None]
        latency = {a: answer.rtt_ms for a, answer in answers.items() if answer is not None}
        if not live:
            if not addresses:
                none = (f"found no swarm on the local network within {self.config.discovery_timeout_s:g}s; "
                        "start nodes with `swarm-node join`, or")  # fmt: skip
                raise NoRouteError(f"{none} pass peers=['host:port']", cli=f"{none} give --peer HOST:PORT")
            if self.probe.refused:  # they answered, but not to us
                raise self.probe.refused[0]
            raise PeerUnavailable(f"none of the peers answered: {', '.join(addresses)}")
        package_id = only_model((i.package_id for _, i in live), self.config.model_id)
        self.peers = [
            PeerView(i.node_id, address, i.start, i.end, i.sessions, i.max_sessions,
                     step_ms=1000 / i.steps_per_s if i.steps_per_s > 0 else 0.0, latency_ms=latency[address],
                     machine=i.machine)
            for address, i in live
            if i.package_id == package_id
        ]  # fmt: skip
        if package_id != self.package_id:
            await self._load_model(package_id, next((a, i.node_id) for a, i in live if i.package_id == package_id))

    async def _load_model(self, package_id: str, source: tuple[str, str]) -> None:
        address, node_id = source
        meta = await self.probe.package_meta(address, node_id)
        manifest = checked_manifest(meta, package_id, address)
        codec = TextCodec.from_json(meta.tokenizer_json.decode(), manifest.tokenizer)
        self.manifest, self.package_id = manifest, package_id
        self._text = TextGenerator(manifest, codec, self._open_stream)

    def route(self, machines: Sequence[str] = ()) -> list[PeerView]:
        """The best route now, around banned nodes, counting this client's sessions on each peer;
        with `machines` (a replay), on the machines that computed each layer where it can be."""
        assert self.manifest is not None
        mine, banned = self._in_flight, self.bans.banned(time.monotonic())
        peers = [
            replace(p, sessions=p.sessions + mine.get(p.node_id, 0)) for p in self.peers if p.node_id not in banned
        ]
        # with the node loop the token rings (last node -> first node) or, with the ring off, comes
        # back up through the stages; without the loop, via this client
        path: ReturnPath = "client" if not self.config.node_loop else "ring" if self.config.token_ring else "stages"
        if self.config.private:  # the client runs the ends, and every token comes back to it
            return plan_inner_route(peers, self.manifest.num_layers, self.config.private_layers, machines, "client")
        return plan_route(peers, self.manifest.num_layers, machines, path)

    async def open_session(
        self,
        request: GenerationRequest,
        stats: GenerationStats,
        route: list[PeerView] | None = None,
        timeout_s: float | None = None,
    ) -> RemoteSession:
        """A session opened along `route` (default: the best now). No recovery: see RecoveringSession."""
        route = route or self.route()
        session = RemoteSession(self.channels.get(route[0].address), route, self.package_id, request.total_tokens,
                                request.sampling, stats, self.config.step_timeout_s,
                                credentials=self.credentials, wire_dtype=self.config.wire_dtype,
                                ring=self.config.token_ring, prefill_chunk=self.config.prefill_chunk,
                                private_layers=self.config.private_layers if self.config.private else None)  # fmt: skip
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
            stub = self.channels.stub(peer.address)
            try:
                await unary(stub.Health, "Health", pb.HealthRequest(), self.credentials, timeout_s, peer.node_id)
            except (grpc.aio.AioRpcError, SwarmError):
                return True
            return False

        answers = await asyncio.gather(*(silent(p) for p in peers))
        return {p.node_id for p, quiet in zip(peers, answers, strict=True) if quiet}

    @asynccontextmanager
    async def _open_stream(
        self, request: GenerationRequest, stats: GenerationStats
    ) -> AsyncIterator[TokenStream]:
        check_verification(self.config)
        if self.config.private:
            async with self._private_stream(request, stats) as private:
                yield private
            return
        drafter = self._drafter(request.speculative, request.total_tokens) if request.speculative else None
        session = RecoveringSession(self, self.config, request, stats)
        try:
            await session.open()
            yield session if drafter is None else _Speculating(session, drafter, stats, self._draft_limit(),
                                                               self.config.speculative_depth)  # fmt: skip
        finally:
            await session.close()

    @asynccontextmanager
    async def _private_stream(self, request: GenerationRequest, stats: GenerationStats) -> AsyncIterator[TokenStream]:
        """A private session (swarm/private.py): the client runs the ends, the route the rest."""
        if request.speculative:
            raise InvalidRequest("speculative decoding does not combine with a private session yet")
        ends = await self._client_ends()
        chunk = self.config.prefill_chunk if self.config.token_ring else 0
        part = ends.session(request.total_tokens, chunk, self.config.wire_dtype)
        session = RecoveringSession(self, self.config, request, stats)
        verifier = None
        if self.config.verify_fraction:
            verifier = Verifier(self, self.config, request, stats, self._verify_rng)
            session.audit = verifier.check
        try:
            await session.open()
            yield PrivateStream(session, part)
        finally:
            await session.close()
            if verifier is not None:
                await verifier.close()

    async def _client_ends(self) -> ClientEnds:
        """The client's part of the model for private sessions: loaded once, kept until close."""
        if self._ends is None:
            assert self.manifest is not None
            config = self.config
            if config.private_package is None and config.private_cache is None:
                raise InvalidRequest("a private session needs the model's ends: give private_package (a package "
                                     "folder) or private_cache (where to fetch them to)")  # fmt: skip
            cache = Path(config.private_cache or ".") / "client"
            package = await client_package(config.private_package, self.manifest, self.package_id,
                                           config.private_layers, self._fetch_sources(), cache)  # fmt: skip
            self._ends = ClientEnds(package, self.config.private_layers)  # once per client: a short load
        return self._ends

    def _fetch_sources(self) -> list[FileSource]:
        return [FileSource(p.address, p.node_id, self.channels, self.credentials) for p in self.peers]

    def _drafter(self, source: str, tokens: int) -> Drafter:
        """`speculative=`: prompt lookup ("lookup"), or a draft model this client runs (the path of a
        package with the swarm's tokenizer; loaded once, kept until the client closes)."""
        assert self.manifest is not None
        if source == LOOKUP:
            return PromptLookup()
        if source not in self._draft_models:
            draft = LocalModel(source)
            try:
                check_same_tokenizer(draft.manifest, self.manifest)
            except BaseException:
                draft.close()
                raise
            self._draft_models[source] = draft
        return model_drafter(self._draft_models[source], self.manifest, tokens)

    def _draft_limit(self) -> int:
        """Nodes roll a verify step back within that step only, which a sliding-window cache cannot
        promise at every size: such models decode without drafts through a swarm."""
        assert self.manifest is not None
        arch = self.manifest.architecture
        return 0 if arch.sliding_window is not None or any(arch.layer_windows) else MAX_DRAFTS

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
        await self.channels.close()
        for draft in self._draft_models.values():
            draft.close()
        if self._ends is not None:
            self._ends.close()


class _Speculating:
    """A recovering session's token stream with speculation (`speculative=`)."""

    def __init__(self, session: RecoveringSession, drafter: Drafter, stats: GenerationStats, draft_limit: int,
                 depth: int) -> None:  # fmt: skip
        self._session, self._drafter, self._stats = session, drafter, stats
        self._limit, self._depth = draft_limit, depth

    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        return self._session.speculative_tokens(ids, count, params, stop_ids, self._drafter, self._stats, self._limit,
                                                self._depth)  # fmt: skip


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
