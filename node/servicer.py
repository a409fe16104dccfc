"""The gRPC face of a node: Info, Health, GetPackageMeta and the Session stream.

A session stream runs through the route the client chose: this node runs its span on each
step and, unless it holds the last layers, pushes the hidden states to the next hop over a
stream of its own, then relays the sampled token back. Every inbound field is checked
before it reaches onnxruntime; a bad request ends only its own stream.
"""

from __future__ import annotations

import asyncio
import itertools
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from node.admission import Admission
from node.batcher import DecodeBatcher
from node.sessions import NodeSession, SessionTable
from node.span import SpanRuntime
from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials, manifest_signed_bytes
from swarm.errors import InvalidRequest, PeerUnavailable, SessionExpired, StaleRoute, SwarmError
from swarm.frames import Frames
from swarm.keys import NODE_ID_HEX, is_node_id
from swarm.package import MANIFEST_NAME
from swarm.sampling import SamplingParams
from swarm.tensors import from_wire, to_wire
from swarm.transport import FAILED_NODE_KEY, failed_node, insecure_channel, open_session_call, status_for

PROTOCOL_VERSION = pb.PROTOCOL_VERSION_CURRENT
FILE_CHUNK_BYTES = 1 << 20
MAX_GOSSIP = 256  # addresses in one Peers reply
MAX_STOP_IDS = 64  # end-of-sequence ids a following step may name
INLINE_COMPUTE_BYTES = 8 << 20
_PASSED_THROUGH = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
)


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


class HopFailed(SwarmError):
    """The next hop failed; carries the gRPC status to relay and the node to blame."""

    def __init__(self, code: grpc.StatusCode, message: str, node_id: str) -> None:
        super().__init__(message)
        self.code, self.node_id = code, node_id


class Downstream:
    """This node's stream to the next hop of a session."""

    def __init__(self, hop: pb.Hop, call: grpc.aio.StreamStreamCall, frames: Frames, timeout_s: float) -> None:
        self.hop, self._call, self._frames, self._timeout = hop, call, frames, timeout_s

    async def exchange(self, request: pb.SessionRequest) -> pb.SessionReply:
        try:
            async with asyncio.timeout(self._timeout):
                await self._call.write(self._frames.seal(request))
                reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            code = exc.code() if exc.code() in _PASSED_THROUGH else grpc.StatusCode.UNAVAILABLE
            blamed = failed_node(exc) or self.hop.node_id
            raise HopFailed(code, f"next hop {self.hop.address}: {exc.details()}", blamed) from exc
        except (TimeoutError, asyncio.InvalidStateError) as exc:
            message = f"next hop {self.hop.address} did not answer within {self._timeout:.0f}s"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, self.hop.node_id) from exc
        if reply is grpc.aio.EOF:
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"next hop {self.hop.address} closed", self.hop.node_id)
        try:
            return self._frames.open(reply)
        except SwarmError as exc:
            message = f"next hop {self.hop.address}: {exc}"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, self.hop.node_id) from exc

    def cancel(self) -> None:
        self._call.cancel()


class NodeServicer(pb_grpc.SwarmNodeServicer):
    def __init__(self, span: SpanRuntime, table: SessionTable, settings: ServicerSettings) -> None:
        self.span, self.table, self.settings = span, table, settings
        self.draining = False
        # one compute thread: sessions take turns, so onnxruntime never oversubscribes the cores
        self._compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-compute")
        # a span this small computes a step in well under a millisecond: handing it to the
        # worker thread would cost more than it saves, so it runs on the loop itself
        self._inline = span.weight_bytes < INLINE_COMPUTE_BYTES
        self.batcher = DecodeBatcher(span, self._compute, lambda: len(table.sessions), settings.max_batch)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.known_peers: Callable[[], list[str]] = lambda: list(settings.peers)
        self.steps_per_s = 0.0  # measured at start by the server (times the capacity a device offers)
        self.prefill_tokens_per_s = 0.0
        self.admission = Admission(settings.credentials, settings.max_calls_per_s, settings.max_sessions_per_peer)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._compute_thread.shutdown(wait=True)

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
            steps_per_s=self.steps_per_s,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
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

    # --- the session stream -------------------------------------------------------------

    async def Session(
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionReply]:
        session: NodeSession | None = None
        downstream: Downstream | None = None
        origin: str | None = None  # the client this session counts against, once admitted
        try:
            caller, frames = await self.admission.handshake(context)
            reader = aiter(requests)  # not before: gRPC's reader, made and never read, warns "never awaited"
            first = await self._next_request(reader, frames)
            if first is None:
                return
            opening = self._check_open(first)
            origin = self.admission.open_session(opening, caller, context.peer())
            session, downstream, node_ids = await self._open(opening)
            yield frames.seal(pb.SessionReply(opened=pb.Opened(node_ids=node_ids)))
            while (request := await self._next_request(reader, frames)) is not None:
                async for reply in self._steps(session, request, downstream):
                    yield frames.seal(reply)
        except HopFailed as exc:
            context.set_trailing_metadata(((FAILED_NODE_KEY, exc.node_id),))
            await context.abort(exc.code, str(exc))
        except SwarmError as exc:
            await context.abort(status_for(exc), str(exc))
        finally:
            if downstream is not None:
                downstream.cancel()
            if session is not None:
                self.table.close(session.session_id)
            if origin is not None:
                self.admission.close_session(origin)

    async def _next_request(self, reader: AsyncIterator[pb.SessionRequest], frames: Frames) -> pb.SessionRequest | None:
        try:
            async with asyncio.timeout(self.settings.idle_timeout_s):
                raw = await anext(reader)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise SessionExpired(f"session idle for {self.settings.idle_timeout_s:g}s; it was closed") from None
        # steps are not rate-limited: each one fills the session (bounded by max_length), and an
        # upstream node carries many clients' sessions, which a per-peer rate would throttle
        return frames.open(raw)

    async def _open(self, msg: pb.OpenSession) -> tuple[NodeSession, Downstream | None, list[str]]:
        if self.draining:
            raise PeerUnavailable("node is shutting down and takes no new sessions")
        sampling = _sampling(msg.sampling)
        cache_bytes = self.span.cache_bytes(msg.max_length)
        session = self.table.open(
            msg.session_id, msg.max_length, sampling, msg.return_logits, cache_bytes, self.span.new_caches
        )
        node_ids = [self.settings.node_id]
        downstream = None
        try:
            if not self.span.is_last:
                downstream, rest = await self._connect(msg)
                node_ids += rest
        except BaseException:
            self.table.close(session.session_id)
            raise
        return session, downstream, node_ids

    def _check_open(self, request: pb.SessionRequest) -> pb.OpenSession:
        """The opening of a session stream, checked against this node before anything is counted or held."""
        if request.WhichOneof("kind") != "open":
            raise InvalidRequest("a session stream must start with OpenSession")
        msg = request.open
        if msg.protocol_version != PROTOCOL_VERSION:
            raise InvalidRequest(f"protocol version {msg.protocol_version}; this node speaks {PROTOCOL_VERSION}")
        if msg.package_id != self.span.package.package_id:
            raise InvalidRequest(
                f"this node serves model {self.span.package.package_id[:16]}, not {msg.package_id[:16]}"
            )
        if not 0 < len(msg.session_id) <= 64:
            raise InvalidRequest("session id must be 1 to 64 characters")
        route = list(msg.route)
        if not route or len(route) > self.span.arch.num_layers:
            raise InvalidRequest(f"route must have 1 to {self.span.arch.num_layers} hops, got {len(route)}")
        me = route[0]
        if (me.start, me.end) != (self.span.start, self.span.end) or me.node_id not in ("", self.settings.node_id):
            raise StaleRoute(
                f"route sends layers [{me.start}, {me.end}) of node {me.node_id or '?'} here; this node is "
                f"{self.settings.node_id} with layers [{self.span.start}, {self.span.end})"
            )
        for hop, following in itertools.pairwise(route):
            if hop.end != following.start:
                raise InvalidRequest("route hops must chain: each hop starts where the previous one ends")
        if route[-1].end != self.span.arch.num_layers:
            raise InvalidRequest(f"route must end at layer {self.span.arch.num_layers}")
        if self.settings.credentials is not None:  # the next hop's credential is made for that node only
            for number, hop in enumerate(route[1:], start=2):
                if not is_node_id(hop.node_id):
                    raise InvalidRequest(f"route hop {number} must name its node id ({NODE_ID_HEX} hex digits)")
        return msg

    async def _connect(self, msg: pb.OpenSession) -> tuple[Downstream, list[str]]:
        hop = msg.route[1]
        channel = self._channels.get(hop.address)
        if channel is None:
            channel = self._channels[hop.address] = insecure_channel(hop.address, self.settings.max_message_bytes)
        stub = pb_grpc.SwarmNodeStub(channel)
        timeout = self.settings.hop_timeout_s
        try:
            call, frames = await open_session_call(stub, self.settings.credentials, hop.address, hop.node_id, timeout)
        except (grpc.aio.AioRpcError, SwarmError) as exc:  # refused us, failed authentication, or silent
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"next hop {hop.address}: {details}", hop.node_id) from exc
        downstream = Downstream(hop, call, frames, timeout)
        forwarded = pb.OpenSession()
        forwarded.CopyFrom(msg)
        del forwarded.route[0]
        try:
            reply = await downstream.exchange(pb.SessionRequest(open=forwarded))
        except BaseException:
            downstream.cancel()
            raise
        if reply.WhichOneof("kind") != "opened":
            downstream.cancel()
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"next hop {hop.address} did not open", hop.node_id)
        return downstream, list(reply.opened.node_ids)

    async def _steps(
        self, session: NodeSession, request: pb.SessionRequest, downstream: Downstream | None
    ) -> AsyncIterator[pb.SessionReply]:
        """The requested step, then (when it asks to `follow`) each sampled token fed back in as
        the next step: the loop closes here rather than at the client, a link fewer per token."""
        follow, stop_ids = self._check_follow(session, request)
        step: Awaitable[pb.SessionReply] = self._step(session, request, downstream)
        while True:
            reply = await step
            if follow == 0 or reply.result.token in stop_ids:
                yield reply
                return
            follow -= 1
            # the next step starts before this answer goes to the client, so writing it
            # overlaps the next step's compute instead of delaying it
            step = asyncio.ensure_future(self._step(session, _fed_back(session, reply), downstream))
            try:
                yield reply
            except BaseException:
                step.cancel()
                raise

    def _check_follow(self, session: NodeSession, request: pb.SessionRequest) -> tuple[int, frozenset[int]]:
        step = request.step
        if step.follow == 0:
            return 0, frozenset()
        if step.WhichOneof("input") != "tokens":
            raise InvalidRequest("only the first node of a route follows on: send token ids with `follow`")
        room = session.max_length - session.length - len(step.tokens.ids)
        if step.follow > room:
            raise InvalidRequest(f"follow of {step.follow} steps; the session has room for {max(room, 0)}")
        if len(step.stop_ids) > MAX_STOP_IDS:
            raise InvalidRequest(f"at most {MAX_STOP_IDS} stop ids, got {len(step.stop_ids)}")
        return step.follow, frozenset(step.stop_ids)

    async def _step(
        self, session: NodeSession, request: pb.SessionRequest, downstream: Downstream | None
    ) -> pb.SessionReply:
        step = request.step
        if request.WhichOneof("kind") != "step":
            raise InvalidRequest("session is already open; send steps")
        if step.step != session.next_step:
            raise InvalidRequest(f"step {step.step} out of order; expected {session.next_step}")
        if step.position != session.length:
            raise InvalidRequest(f"step starts at position {step.position} but the session holds {session.length}")
        started = time.perf_counter()
        hidden = self._step_input(session, step)
        if hidden.shape[1] == 1:
            output = await self.batcher.step(session, hidden)
        else:
            sampling, logits = session.sampling, session.return_logits
            output = await self._compute(self.span.forward, hidden, session.caches, sampling, logits)
        compute_ms = (time.perf_counter() - started) * 1000
        session.next_step += 1
        timing = pb.HopTiming(node_id=self.settings.node_id, compute_ms=compute_ms)
        if output.hidden is None:
            result = pb.StepResult(step=step.step, token=output.token, timings=[timing])
            if output.logits is not None:
                result.logits.CopyFrom(to_wire(output.logits))
            return pb.SessionReply(result=result)
        assert downstream is not None
        forwarded = pb.Step(step=step.step, position=step.position, hidden=to_wire(output.hidden))
        reply = await downstream.exchange(pb.SessionRequest(step=forwarded))
        if reply.WhichOneof("kind") != "result" or reply.result.step != step.step:
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, "next hop answered out of turn", downstream.hop.node_id)
        reply.result.timings.insert(0, timing)
        return reply

    async def _compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._compute_thread, fn, *args)

    def _step_input(self, session: NodeSession, step: pb.Step) -> np.ndarray:
        """The step's hidden states (1, S, H), checked against the span and the session."""
        room = session.max_length - session.length
        which = step.WhichOneof("input")
        if self.span.is_first:
            if which != "tokens":
                raise InvalidRequest("the first node of a route takes token ids")
            ids = list(step.tokens.ids)
            if not 1 <= len(ids) <= room:
                raise InvalidRequest(f"step has {len(ids)} tokens; the session has room for {room}")
            hidden = self.span.embed(ids)
        else:
            if which != "hidden":
                raise InvalidRequest("this node takes hidden states, not token ids")
            hidden = from_wire(step.hidden, (1, None, self.span.arch.hidden_size))
            if hidden.shape[1] > room:
                raise InvalidRequest(f"step has {hidden.shape[1]} positions; the session has room for {room}")
        return np.ascontiguousarray(hidden)


def _fed_back(session: NodeSession, reply: pb.SessionReply) -> pb.SessionRequest:
    """The next step of a following session: the token just sampled, as a client would send it."""
    ids = pb.TokenIds(ids=[reply.result.token])
    return pb.SessionRequest(step=pb.Step(step=session.next_step, position=session.length, tokens=ids))


def _sampling(msg: pb.Sampling) -> SamplingParams:
    return SamplingParams(
        temperature=float(msg.temperature),
        top_k=int(msg.top_k),
        top_p=float(msg.top_p or 1.0),
        seed=int(msg.seed),
    )
