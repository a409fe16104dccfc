"""The gRPC face of a node: the small RPCs (Info, Health, GetPackageMeta, Peers, FetchFile) and
the Session stream, handed to `node/stream.py`.

The servicer owns what a node's calls share: the span, the session table, admission
(`node/admission.py`), the compute executor and the batcher that runs steps on it, and the
channels to next hops. Every call is admitted before it is answered.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from node.admission import PROTOCOL_VERSION, Admission
from node.batcher import ComputeExecutor, DecodeBatcher
from node.sessions import SessionTable
from node.stream import SessionStream, StreamSettings
from node.throughput import Capacity
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials, manifest_signed_bytes
from swarm.package import MANIFEST_NAME
from swarm.span import SpanRuntime
from swarm.transport import ChannelPool

FILE_CHUNK_BYTES = 1 << 20
MAX_GOSSIP = 256  # addresses in one Peers reply


@dataclass(frozen=True)
class ServicerSettings:
    node_id: str
    idle_timeout_s: float  # close a session that sends nothing for this long
    hop_timeout_s: float  # the next hop must answer a step within this
    max_message_bytes: int
    peers: tuple[str, ...] = ()  # other nodes' host:port, told to anyone who asks
    max_batch: int = 16  # single-token steps of different sessions run together, at most this many
    credentials: Credentials | None = None  # None = an open swarm: no authentication, plain frames
    max_sessions_per_peer: int = 0  # 0 = only the node's own session limit
    max_calls_per_s: float = 2000.0  # calls (not session steps) per peer, bursts of twice that; 0 = off


class NodeServicer(pb_grpc.SwarmNodeServicer):
    """`compute` runs the steps (the caller owns it and closes it after the servicer)."""

    def __init__(self, span: SpanRuntime, table: SessionTable, settings: ServicerSettings,
                 compute: ComputeExecutor) -> None:  # fmt: skip
        self.span, self.table, self.settings = span, table, settings
        self.batcher = DecodeBatcher(span, compute, lambda: len(table.sessions), settings.max_batch)
        self.channels = ChannelPool(settings.max_message_bytes)  # to next hops
        self.known_peers: Callable[[], list[str]] = lambda: list(settings.peers)
        self.capacity = Capacity()  # what Info and the mDNS record announce (set once measured)
        self.admission = Admission(settings.credentials, settings.max_calls_per_s, settings.max_sessions_per_peer)
        stream = StreamSettings(settings.node_id, settings.idle_timeout_s, settings.hop_timeout_s, settings.credentials)
        self.stream = SessionStream(span, table, self.admission, compute, self.batcher, self.channels, stream)

    @property
    def draining(self) -> bool:
        """Whether the node refuses new sessions (it is leaving)."""
        return self.stream.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.stream.draining = value

    async def close(self) -> None:
        await self.channels.close()

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionReply]:
        async for reply in self.stream.serve(requests, context):  # gRPC wants a generator of its own
            yield reply

    # --- small RPCs ---------------------------------------------------------------------

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.NodeInfo:
        await self.admission.unary(context, "Info", request)
        m = self.span.package.manifest
        limits = self.table.limits
        return pb.NodeInfo(
            protocol_version=PROTOCOL_VERSION,
            node_id=self.settings.node_id,
            package_id=self.span.package.package_id,
            model_name=m.name,
            start=self.span.start,
            end=self.span.end,
            num_layers=m.num_layers,
            max_context=limits.max_context,
            sessions=len(self.table.sessions),
            max_sessions=limits.max_sessions,
            memory_budget=limits.memory_budget,
            memory_used=self.table.memory_used,
            kv_cache_bytes=self.table.cache_bytes,
            hidden_size=m.architecture.hidden_size,
            steps_per_s=self.capacity.steps_per_s,
            prefill_tokens_per_s=self.capacity.prefill_tokens_per_s,
            machine=platform.machine(),  # the ISA whose kernels compute this span
        )

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        await self.admission.unary(context, "Health", request)
        status = pb.HealthReply.DRAINING if self.draining else pb.HealthReply.SERVING
        return pb.HealthReply(status=status, protocol_version=PROTOCOL_VERSION)

    async def GetPackageMeta(self, request: pb.PackageMetaRequest, context: grpc.aio.ServicerContext) -> pb.PackageMeta:
        await self.admission.unary(context, "GetPackageMeta", request)
        package = self.span.package
        manifest = package.path(MANIFEST_NAME).read_bytes()
        meta = pb.PackageMeta(
            manifest_json=manifest, tokenizer_json=package.path(package.manifest.tokenizer.file).read_bytes()
        )
        if self.settings.credentials is not None:
            meta.manifest_signature = self.settings.credentials.identity.sign(manifest_signed_bytes(manifest))
        return meta

    async def Peers(self, request: pb.PeersRequest, context: grpc.aio.ServicerContext) -> pb.PeerList:
        await self.admission.unary(context, "Peers", request)
        return pb.PeerList(addresses=self.known_peers()[:MAX_GOSSIP])

    async def FetchFile(
        self, request: pb.FetchFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FileChunk]:
        await self.admission.unary(context, "FetchFile", request)
        package = self.span.package
        if request.package_id != package.package_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this node has model {package.package_id[:16]} only")
        # only names the manifest lists: a request can never reach another path
        names = {MANIFEST_NAME, package.manifest.tokenizer.file, package.manifest.embedding.file,
                 package.manifest.head.file, *(b.file for b in package.manifest.blocks)}  # fmt: skip
        path = package.path(request.file)
        if request.file not in names or not path.is_file():
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this node does not hold {request.file!r}")
        size = path.stat().st_size
        if request.offset > size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is past the end ({size})")
        with path.open("rb") as fh:
            fh.seek(request.offset)
            offset = request.offset
            while chunk := await asyncio.to_thread(fh.read, FILE_CHUNK_BYTES):
                yield pb.FileChunk(offset=offset, data=chunk)
                offset += len(chunk)
