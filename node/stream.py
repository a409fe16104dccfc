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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import grpc
import numpy as np

from node.admission import Admission, check_drafts, check_follow, check_open, check_step, roles
from node.batcher import ComputeExecutor, DecodeBatcher
from node.hops import Downstream, HopFailed, ReturnLink, ReturnSlot, SessionLinks, forget, unless_failed
from node.sessions import NodeSession, SessionTable
from node.step_input import hidden_input, returned, sampling_of, token_chunks
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials
from swarm.errors import InvalidRequest, PeerUnavailable, SessionExpired, SwarmError
from swarm.frames import Frames
from swarm.span import SpanRuntime, StepOutput, prefill_chunks, truncate_caches
from swarm.speculative import MAX_DEPTH
from swarm.tensors import to_wire
from swarm.transport import FAILED_NODE_KEY, ChannelPool, open_session_call, status_for


@dataclass(frozen=True)
class StreamSettings:
    node_id: str
    idle_timeout_s: float  # close a session that sends nothing for this long
    hop_timeout_s: float  # the next hop must answer a step within this
    credentials: Credentials | None = None  # None = an open swarm: no authentication, plain frames


class SessionStream:
    """The `Session` RPC of one node: `serve(requests, context)` is the handler."""

    def __init__(self, span: SpanRuntime, table: SessionTable, admission: Admission, compute: ComputeExecutor,
                 batcher: DecodeBatcher, channels: ChannelPool, settings: StreamSettings) -> None:  # fmt: skip
        self.span, self.table, self.admission, self.settings = span, table, admission, settings
        self._compute, self.batcher, self._channels = compute, batcher, channels
        self.draining = False  # refuse new sessions (the node is leaving)
        self.rings: dict[str, ReturnSlot] = {}  # sessions this node heads a ring of, by id
        self.on_step: Callable[[float], None] = lambda seconds: None  # told each step's time here (metrics)

    async def serve(
        self, requests: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionReply]:
        session: NodeSession | None = None
        links: SessionLinks | None = None
        origin: str | None = None  # the client this session counts against, once admitted
        try:
            caller, frames = await self.admission.handshake(context)
            reader = aiter(requests)  # not before: gRPC's reader, made and never read, warns "never awaited"
            first = await self._next_request(reader, frames)
            if first is None:
                return
            if first.WhichOneof("kind") == "attach":  # not a session: the return link of one we head
                async for reply in self._return_link(first.attach, caller.node_id if caller else None, reader, frames):
                    yield frames.seal(reply)
                return
            opening = check_open(first, self.span, self.settings.node_id, self.settings.credentials is not None)
            origin = self.admission.open_session(opening, caller, context.peer())
            session, links = await self._open(opening)
            yield frames.seal(pb.SessionReply(opened=pb.Opened(node_ids=links.node_ids)))
            async for reply in self._session_replies(session, links, reader, frames):
                yield frames.seal(reply)
        except HopFailed as exc:
            context.set_trailing_metadata(((FAILED_NODE_KEY, exc.node_id),))
            await context.abort(exc.code, str(exc))
        except SwarmError as exc:
            await context.abort(status_for(exc), str(exc))
        finally:
            if links is not None:
                links.close()
            if session is not None:
                self.table.close(session.session_id)
                self.rings.pop(session.session_id, None)
            if origin is not None:
                self.admission.close_session(origin)

    async def _session_replies(self, session: NodeSession, links: SessionLinks,
                               reader: AsyncIterator[pb.SessionRequest], frames: Frames,
                               ) -> AsyncIterator[pb.SessionReply]:  # fmt: skip
        """Each request's replies, in order. At a ring's head, verify steps do not wait for their
        results: the next request is read (and run) while earlier results are still coming round,
        so pipelined speculation keeps every node of the ring busy. Any other step waits for them."""
        if links.slot is None:  # not a ring's head: each step is answered (or passed on) in turn
            while (message := await self._read(reader, frames, links)) is not None:
                async for reply in self._steps(session, message, links):
                    yield reply
            return
        request = asyncio.ensure_future(self._read(reader, frames, links))
        try:
            while True:
                # at most MAX_DEPTH results outstanding: a client that sends without reading is held back
                while links.ahead and (len(links.ahead) >= MAX_DEPTH or not request.done()):
                    waited = (links.ahead[0],) if len(links.ahead) >= MAX_DEPTH else (request, links.ahead[0])
                    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                    if links.ahead[0].done():
                        yield pb.SessionReply(result=links.ahead.popleft().result())
                if (message := await request) is None:
                    break
                if not (message.WhichOneof("kind") == "step" and message.step.drafts):
                    while links.ahead:  # replies go out in the order of their steps
                        yield pb.SessionReply(result=await links.ahead.popleft())
                async for reply in self._steps(session, message, links):
                    yield reply
                request = asyncio.ensure_future(self._read(reader, frames, links))
            while links.ahead:  # the client stopped sending: what it sent is still answered
                yield pb.SessionReply(result=await links.ahead.popleft())
        finally:
            forget(request)

    async def _read(self, reader: AsyncIterator[pb.SessionRequest], frames: Frames,
                    links: SessionLinks) -> pb.SessionRequest | None:  # fmt: skip
        """The next request, unless the session's ring fails first."""
        return await unless_failed(self._next_request(reader, frames), links.failure)

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

    async def _open(self, msg: pb.OpenSession) -> tuple[NodeSession, SessionLinks]:
        if self.draining:
            raise PeerUnavailable("node is shutting down and takes no new sessions")
        sampling = None if msg.private else sampling_of(msg.sampling)  # a private session's client samples
        cache_bytes = self.span.cache_bytes(msg.max_length)
        session = self.table.open(
            msg.session_id, msg.max_length, sampling, msg.return_logits, cache_bytes, self.span.new_caches
        )
        session.wire_dtype = msg.wire_dtype or "float32"
        session.first, session.last = roles(msg, self.span)
        session.private, session.return_all = msg.private, msg.private and msg.client_layers > 0
        alone = session.first and session.last  # the whole route: no ring to close
        session.ring, session.prefill_chunk = msg.HasField("ring_head") and not alone, msg.prefill_chunk
        links = SessionLinks([self.settings.node_id])
        try:
            if session.ring and session.first:  # before the opening goes on: the last node attaches
                links.slot = self.rings[session.session_id] = ReturnSlot(msg.route[-1])
            if not session.last:
                links.downstream, rest = await self._connect(msg, session.first)
                links.node_ids += rest
                if session.ring:
                    self._watch(links)
            elif session.ring:
                links.back = await ReturnLink.attach(self._channels, self.settings.credentials, msg.ring_head,
                                                     session.session_id, self.settings.hop_timeout_s)  # fmt: skip
        except BaseException:
            links.close()
            self.rings.pop(session.session_id, None)
            self.table.close(session.session_id)
            raise
        return session, links

    def _watch(self, links: SessionLinks) -> None:
        """On a ring, fail the session as soon as its next hop's stream ends."""
        assert links.downstream is not None
        failure = links.downstream.watch()
        if links.slot is not None:
            slot = links.slot
            if not slot.attached:  # the last node answered the opening without its return link
                last = slot.last_hop
                raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"{last.address} opened no return link", last.node_id)
            failure.add_done_callback(lambda done: slot.fail(done.result()) if not done.cancelled() else None)

    async def _connect(self, msg: pb.OpenSession, first: bool) -> tuple[Downstream, list[str]]:
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
        if first and msg.HasField("ring_head"):  # the ring's head names itself for the last node
            forwarded.ring_head.node_id = self.settings.node_id
        try:
            reply = await downstream.exchange(pb.SessionRequest(open=forwarded))
        except BaseException:
            downstream.cancel()
            raise
        if reply.WhichOneof("kind") != "opened":
            downstream.cancel()
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"next hop {hop.address} did not open", hop.node_id)
        return downstream, list(reply.opened.node_ids)

    async def _return_link(self, msg: pb.ReturnLink, caller: str | None, reader: AsyncIterator[pb.SessionRequest],
                           frames: Frames) -> AsyncIterator[pb.SessionReply]:  # fmt: skip
        """The return link of a session this node heads: each result goes to the step awaiting it.
        When it breaks, or sends what was not awaited, the session fails, blaming its last node."""
        slot = self.rings.get(msg.session_id)
        if slot is None:
            raise InvalidRequest("no session here awaits a return link with that id")
        slot.attach(caller)
        yield pb.SessionReply(opened=pb.Opened(node_ids=[self.settings.node_id]))
        last = slot.last_hop
        try:
            while (request := await unless_failed(self._next_request(reader, frames), slot.failure)) is not None:
                if request.WhichOneof("kind") != "returned":
                    raise InvalidRequest("a return link carries step results only")
                slot.deliver(request.returned)
        except HopFailed:
            if slot.closed:  # the session ended here first: nothing left to return
                return
            raise
        except SwarmError as exc:
            slot.fail(HopFailed(grpc.StatusCode.UNAVAILABLE, f"return link from {last.address}: {exc}", last.node_id))
            raise
        slot.fail(HopFailed(grpc.StatusCode.UNAVAILABLE, f"{last.address} closed its return link", last.node_id))

    async def _steps(self, session: NodeSession, request: pb.SessionRequest,
                     links: SessionLinks) -> AsyncIterator[pb.SessionReply]:  # fmt: skip
        """The requested step, then (when it asks to `follow`) each sampled token fed back in as
        the next step: the loop closes here rather than at the client, a link fewer per token."""
        follow, stop_ids = check_follow(session, request)
        step: Awaitable[pb.SessionReply | None] = self._step(session, request, links)
        while True:
            reply = await step
            if reply is None:  # a ring node past the head: its results go round the ring
                return
            if follow == 0 or reply.result.token in stop_ids:
                yield reply
                return
            follow -= 1
            # the next step starts before this answer goes to the client, so writing it
            # overlaps the next step's compute instead of delaying it
            step = asyncio.ensure_future(self._step(session, _fed_back(session, reply), links))
            try:
                yield reply
            except BaseException:
                step.cancel()
                raise

    async def _step(self, session: NodeSession, request: pb.SessionRequest,
                    links: SessionLinks) -> pb.SessionReply | None:  # fmt: skip
        """One step through this span and on; the result, when it comes back through this node."""
        step = check_step(session, request, self.span)
        if step.chained and session.last and step.drafts[0] != session.chain_token:
            return await self._cancelled(session, step, links)  # the step ahead did not hold
        started = time.perf_counter()
        if step.position < session.length:  # after a verify step: drop the drafts it rejected
            truncate_caches(session.caches, step.position)
        floor, session.rollback_floor, session.chain_token = session.rollback_floor, None, None
        if session.first:
            chunks = self._first_chunks(session, step)
            for chunk in chunks[:-1]:  # on a ring: sent on while the next chunk computes here
                position = session.length
                hidden = await self._compute.run(self.span.run_blocks, chunk, session.caches)
                if not session.last:
                    await self._onward(session, step, position, StepOutput(hidden=hidden), links, partial=True)
                elif session.return_all:  # alone in a private session: the client gets the whole step
                    session.held.append(hidden)
            hidden = chunks[-1]
        else:
            hidden = hidden_input(session, step, self.span.arch.hidden_size)
        position = session.length
        if step.partial:
            output = StepOutput(hidden=await self._compute.run(self.span.run_blocks, hidden, session.caches))
            if session.last:
                if session.return_all:
                    session.held.append(output.hidden)  # type: ignore[arg-type]
                return None
            return await self._onward(session, step, position, output, links, partial=True)
        if step.drafts:  # a chained step's rollback may reach back as far as its chain's first step's
            own = check_drafts(step, hidden.shape[1], position)
            session.rollback_floor = min(own, floor if floor is not None else own) if step.chained else own
        if step.drafts and session.last:
            output = await self._compute.run(self._verify, session, hidden, step)
        elif hidden.shape[1] == 1:
            output = await self.batcher.step(session, hidden)
        else:
            sampling, logits = session.sampling, session.return_logits
            output = await self._compute.run(self.span.forward, hidden, session.caches, sampling, logits)
        session.next_step += 1
        timing = pb.HopTiming(node_id=self.settings.node_id, compute_ms=(time.perf_counter() - started) * 1000)
        reply = await self._onward(session, step, position, output, links, timing=timing)
        self.on_step(time.perf_counter() - started)
        return reply

    def _verify(self, session: NodeSession, hidden: np.ndarray, step: pb.Step) -> StepOutput:
        """The last node's part of a verify step. A chained step's first draft is the token the step
        ahead ended with (checked before), so only the rest are judged, and it counts as accepted."""
        drafts = list(step.drafts[1:] if step.chained else step.drafts)
        assert session.sampling is not None  # (a private session's steps carry no drafts)
        output = self.span.verify(hidden, session.caches, drafts, session.sampling)
        assert output.accepted is not None
        if output.accepted == len(drafts):
            session.chain_token = output.token
        return replace(output, accepted=output.accepted + 1) if step.chained else output

    async def _cancelled(self, session: NodeSession, step: pb.Step, links: SessionLinks) -> pb.SessionReply | None:
        """The answer to a chained step the last node does not run: the step ahead did not hold."""
        session.next_step += 1
        session.chain_token = None
        result = pb.StepResult(step=step.step, cancelled=True, timings=step.timings)
        if links.back is None:
            return pb.SessionReply(result=result)
        await links.back.result(result)
        return None

    async def _onward(self, session: NodeSession, step: pb.Step, position: int, output: StepOutput,
                      links: SessionLinks, partial: bool = False,
                      timing: pb.HopTiming | None = None) -> pb.SessionReply | None:  # fmt: skip
        """Hand `output` on: the result (the last node) up the chain or round the ring; hidden
        states to the next hop, then, at the ring's head or on a chain, wait for the result."""
        timings = [*step.timings, timing] if session.ring and timing is not None else []
        if session.last and not partial:
            result = pb.StepResult(step=step.step, token=output.token or 0, timings=timings or [timing],
                                   accepted=output.accepted or 0)  # fmt: skip
            if output.logits is not None:
                result.logits.CopyFrom(to_wire(output.logits))
            if session.private:
                result.hidden.CopyFrom(to_wire(returned(session, output), session.wire_dtype))
            if links.back is None:
                return pb.SessionReply(result=result)
            await links.back.result(result)
            return None
        downstream = links.downstream
        assert downstream is not None and output.hidden is not None
        hidden = to_wire(output.hidden, session.wire_dtype)
        forwarded = pb.Step(step=step.step, position=position, hidden=hidden, partial=partial, timings=timings,
                            drafts=step.drafts, chained=step.chained)  # fmt: skip
        if not session.ring:
            reply = await downstream.exchange(pb.SessionRequest(step=forwarded))
            if reply.WhichOneof("kind") != "result" or reply.result.step != step.step:
                raise HopFailed(grpc.StatusCode.UNAVAILABLE, "next hop answered out of turn", downstream.hop.node_id)
            reply.result.timings.insert(0, timing)
            return reply
        if links.slot is None or partial:  # past the head, or more of this step is to come
            await downstream.send(pb.SessionRequest(step=forwarded))
            return None
        links.slot.expect(step.step)  # before it goes: the result may come round before `send` returns
        await downstream.send(pb.SessionRequest(step=forwarded))
        coming = links.slot.result(step.step, self.settings.hop_timeout_s, downstream.hop)
        if step.drafts:  # pipelined speculation: the next verify step may go on before this comes back
            links.ahead.append(asyncio.ensure_future(coming))
            return None
        return pb.SessionReply(result=await coming)

    def _first_chunks(self, session: NodeSession, step: pb.Step) -> list[np.ndarray]:
        """The first node's input as hidden states, in the session's prefill chunks: the embedded
        token ids, or (a private session) the client's hidden states cut at the same places."""
        if session.private:
            hidden = hidden_input(session, step, self.span.arch.hidden_size)
            cuts = prefill_chunks(range(hidden.shape[1]), session.prefill_chunk)
            return [hidden[:, cut[0] : cut[-1] + 1] for cut in cuts]
        return [self.span.embed(ids) for ids in token_chunks(session, step)]


def _fed_back(session: NodeSession, reply: pb.SessionReply) -> pb.SessionRequest:
    """The next step of a following session: the token just sampled, as a client would send it."""
    ids = pb.TokenIds(ids=[reply.result.token])
    return pb.SessionRequest(step=pb.Step(step=session.next_step, position=session.length, tokens=ids))
