"""The session stream of a node: open a session along its route, then run each step.

The stream runs through the route the client chose: this node runs its span on each step and,
unless it holds the last layers, pushes the hidden states to the next hop over a stream of its
own (`Downstream`), then relays the sampled token back. The first node closes the token loop:
with `follow`, it feeds each sampled token back in as the next step by itself. What a session
may ask is checked first (`node/admission.py`); a bad request ends only its own stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import numpy as np

from node.admission import Admission, check_follow, check_open
from node.batcher import ComputeExecutor, DecodeBatcher
from node.sessions import NodeSession, SessionTable
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials
from swarm.errors import InvalidRequest, PeerUnavailable, SessionExpired, SwarmError
from swarm.frames import Frames
from swarm.sampling import SamplingParams
from swarm.span import SpanRuntime
from swarm.tensors import from_wire, to_wire
from swarm.transport import FAILED_NODE_KEY, ChannelPool, failed_node, open_session_call, status_for

_PASSED_THROUGH = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
)


@dataclass(frozen=True)
class StreamSettings:
    node_id: str
    idle_timeout_s: float  # close a session that sends nothing for this long
    hop_timeout_s: float  # the next hop must answer a step within this
    credentials: Credentials | None = None  # None = an open swarm: no authentication, plain frames


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


class SessionStream:
    """The `Session` RPC of one node: `serve(requests, context)` is the handler."""

    def __init__(self, span: SpanRuntime, table: SessionTable, admission: Admission, compute: ComputeExecutor,
                 batcher: DecodeBatcher, channels: ChannelPool, settings: StreamSettings) -> None:  # fmt: skip
        self.span, self.table, self.admission, self.settings = span, table, admission, settings
        self._compute, self.batcher, self._channels = compute, batcher, channels
        self.draining = False  # refuse new sessions (the node is leaving)

    async def serve(
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
            opening = check_open(first, self.span, self.settings.node_id, self.settings.credentials is not None)
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
        session.wire_dtype = msg.wire_dtype or "float32"
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

    async def _connect(self, msg: pb.OpenSession) -> tuple[Downstream, list[str]]:
        hop = msg.route[1]
        stub = self._channels.stub(hop.address)
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
        follow, stop_ids = check_follow(session, request)
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

    async def _step(
        self, session: NodeSession, request: pb.SessionRequest, downstream: Downstream | None
    ) -> pb.SessionReply:
        step = check_step(session, request)
        started = time.perf_counter()
        hidden = self._step_input(session, step)
        if hidden.shape[1] == 1:
            output = await self.batcher.step(session, hidden)
        else:
            sampling, logits = session.sampling, session.return_logits
            output = await self._compute.run(self.span.forward, hidden, session.caches, sampling, logits)
        compute_ms = (time.perf_counter() - started) * 1000
        session.next_step += 1
        timing = pb.HopTiming(node_id=self.settings.node_id, compute_ms=compute_ms)
        if output.hidden is None:
            result = pb.StepResult(step=step.step, token=output.token, timings=[timing])
            if output.logits is not None:
                result.logits.CopyFrom(to_wire(output.logits))
            return pb.SessionReply(result=result)
        assert downstream is not None
        forwarded = pb.Step(step=step.step, position=step.position, hidden=to_wire(output.hidden, session.wire_dtype))
        reply = await downstream.exchange(pb.SessionRequest(step=forwarded))
        if reply.WhichOneof("kind") != "result" or reply.result.step != step.step:
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, "next hop answered out of turn", downstream.hop.node_id)
        reply.result.timings.insert(0, timing)
        return reply

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
            hidden = from_wire(step.hidden, (1, None, self.span.arch.hidden_size), (session.wire_dtype,))
            if hidden.shape[1] > room:
                raise InvalidRequest(f"step has {hidden.shape[1]} positions; the session has room for {room}")
        return np.ascontiguousarray(hidden)


def check_step(session: NodeSession, request: pb.SessionRequest) -> pb.Step:
    """A step of an open session, in order and at the position the session is at."""
    step = request.step
    if request.WhichOneof("kind") != "step":
        raise InvalidRequest("session is already open; send steps")
    if step.step != session.next_step:
        raise InvalidRequest(f"step {step.step} out of order; expected {session.next_step}")
    if step.position != session.length:
        raise InvalidRequest(f"step starts at position {step.position} but the session holds {session.length}")
    return step


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
