"""The client's side of one session stream through a route of nodes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence

import grpc
import numpy as np

from swarm._proto import swarm_pb2 as pb
from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import Credentials
from swarm.errors import InvalidRequest, PeerUnavailable, SwarmError
from swarm.frames import Frames
from swarm.generation import GenerationStats
from swarm.origin import sign_origin
from swarm.routing import PeerView
from swarm.sampling import SamplingParams
from swarm.speculative import Pass
from swarm.tensors import from_wire
from swarm.transport import FAILED_NODE_KEY, error_from_rpc, error_from_status, open_session_call

PROTOCOL_VERSION = pb.PROTOCOL_VERSION_CURRENT


class StepTimeout(PeerUnavailable):
    """A step got no answer within its deadline: some hop of the route stalled."""


def _sampling_message(params: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=params.seed)


class RemoteSession:
    """Opens the session along `route`; `tokens` is its token stream, `step` sends one step."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        route: Sequence[PeerView],
        package_id: str,
        max_length: int,
        sampling: SamplingParams,
        stats: GenerationStats,
        step_timeout_s: float = 60.0,
        return_logits: bool = False,
        credentials: Credentials | None = None,
        wire_dtype: str = "float32",
        ring: bool = True,
        prefill_chunk: int = 0,
        private_layers: int | None = None,
    ) -> None:
        self.session_id = uuid.uuid4().hex
        self.route = list(route)
        self.sampling = sampling
        self.last_logits: np.ndarray | None = None
        self._stats = stats
        self._timeout = step_timeout_s
        self._step = 0
        self.length = 0
        self._following = 0  # steps the first node will still take by itself
        self._ahead = 0  # verify steps sent and not yet answered
        self._stop_ids: frozenset[int] = frozenset()  # where it stops following
        self.on_close: Callable[[list[PeerView]], None] | None = None  # told once, when the session closes
        self._closed = False
        self._stub = pb_grpc.SwarmNodeStub(channel)
        self._credentials = credentials
        self._call: grpc.aio.StreamStreamCall | None = None
        self._frames: Frames | None = None
        self._open = pb.OpenSession(
            protocol_version=PROTOCOL_VERSION,
            session_id=self.session_id,
            package_id=package_id,
            route=[pb.Hop(address=p.address, node_id=p.node_id, start=p.start, end=p.end) for p in route],
            max_length=max_length,
            return_logits=return_logits,
            wire_dtype=wire_dtype,
            prefill_chunk=prefill_chunk if ring or len(route) == 1 else 0,
        )
        self.private = private_layers is not None  # the client runs the ends: no sampling leaves it
        if self.private:
            self._open.private, self._open.client_layers = True, private_layers or 0
        else:
            self._open.sampling.CopyFrom(_sampling_message(sampling))
        if ring and len(route) > 1:  # results come back to the first node straight from the last
            head = route[0]
            self._open.ring_head.CopyFrom(pb.Hop(address=head.address, node_id=head.node_id, start=head.start,
                                                 end=head.end))  # fmt: skip
        if credentials is not None:  # every hop counts this session against us, not against its relays
            sign_origin(credentials, self._open)

    async def open(self, timeout: float | None = None) -> None:
        first = self.route[0]
        try:
            self._call, self._frames = await open_session_call(
                self._stub, self._credentials, first.address, first.node_id, timeout or self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, first.address) from exc
        reply = await self._exchange(pb.SessionRequest(open=self._open), timeout)
        if reply.WhichOneof("kind") != "opened":
            raise PeerUnavailable(f"{self.route[0].address} did not open the session")
        self._stats.route = [f"{p.address}:{p.start}-{p.end}" for p in self.route]

    async def step(self, ids: Sequence[int], params: SamplingParams, timeout: float | None = None) -> int:
        """Send one step, `ids` appended, and return the sampled next token."""
        self._check(params)
        return await self._send(ids, 0, (), timeout)

    async def verify(self, ids: Sequence[int], drafts: Sequence[int], params: SamplingParams,
                     timeout: float | None = None, chained: bool = False) -> tuple[int, int]:  # fmt: skip
        """Send a verify step: `ids` appended, the last `len(drafts)` of them proposed tokens (all of
        them for a `chained` step). Returns (drafts accepted, the token after them); the session
        then holds only the accepted ones (the next step's position tells every node to drop the rest)."""
        self._check(params)
        sent = Pass(self.length, list(ids), list(drafts), chained)
        await self.send_verify(sent)
        return await self.receive_verify(sent, timeout)

    async def send_verify(self, sent: Pass) -> None:
        """Send the verify step `sent` without waiting for the answers to those sent before it
        (pipelined speculation: the first node runs it while they are still on their way)."""
        if self._following:
            raise InvalidRequest("the route is still following on from the last token; read its answers first")
        if not sent.drafts or sent.ids[len(sent.ids) - len(sent.drafts) :] != sent.drafts:
            raise InvalidRequest("a verify step's drafts must be the last of its ids")
        assert self._call is not None and self._frames is not None, "open the session first"
        step = pb.Step(step=self._step + self._ahead, position=sent.position, tokens=pb.TokenIds(ids=sent.ids),
                       drafts=sent.drafts, chained=sent.chained)  # fmt: skip
        self._ahead += 1
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._call.write(self._frames.seal(pb.SessionRequest(step=step)))
            return
        # the node ended the stream: reading the answer says why

    async def receive_verify(self, sent: Pass, timeout: float | None = None) -> tuple[int, int]:
        """The answer to `sent`, the oldest verify step unanswered. A live step sets the session's
        length to what it kept; a dead one (the pass ahead did not hold) changes nothing."""
        reply = await self._exchange(None, timeout)
        self._ahead -= 1
        token = self._answer(reply, 0)
        accepted, cancelled = int(reply.result.accepted), reply.result.cancelled
        last = self.route[-1].address
        if cancelled and sent.live:
            raise PeerUnavailable(f"{last} cancelled a verify step whose pass ahead held")
        if accepted > len(sent.drafts):
            raise PeerUnavailable(f"{last} accepted {accepted} of {len(sent.drafts)} drafts")
        if sent.live:
            self.length = sent.position + len(sent.ids) - len(sent.drafts) + accepted
        return accepted, token

    async def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = (),
        follow: bool = True, timeout_for: Callable[[int], float] | None = None,
    ) -> AsyncGenerator[int, None]:  # fmt: skip
        """Append `ids`, then yield up to `count` sampled tokens, each fed back in as the next input,
        ending after a token in `stop_ids`. With `follow` the first node feeds them back itself: one
        step goes out and `count` answers come back; without it, each token is sent back from here.
        `timeout_for(tokens)`: the deadline of a step of that many tokens (default: the session's)."""
        self._check(params)
        stop = frozenset(stop_ids)
        deadline = timeout_for or (lambda _tokens: self._timeout)
        produced, ids = 0, list(ids)
        while produced < count:
            ahead = max(min(count - produced - 1, self._open.max_length - self.length - len(ids)), 0) if follow else 0
            token = await self._send(ids, ahead, stop_ids, deadline(len(ids)))
            produced += 1
            yield token
            while self._following:  # the first node fed it back already: only read the answer
                token = await self._receive(deadline(1))
                produced += 1
                yield token
            if token in stop:
                return
            ids = [token]

    async def hidden_step(self, hidden: pb.Tensor, positions: int, timeout: float | None = None) -> pb.Tensor:
        """A private session's step: `hidden` (1, positions, H) in, the last node's hidden states
        out (unchecked here: the caller knows what shape it expects)."""
        if not self.private:
            raise InvalidRequest("hidden-state steps belong to private sessions")
        step = pb.Step(step=self._step, position=self.length, hidden=hidden)
        reply = await self._exchange(pb.SessionRequest(step=step), timeout)
        return self._hidden_answer(reply, hidden, positions)

    async def hidden_steps(self, steps: Sequence[tuple[pb.Tensor, int]], timeout: float | None = None,
                           window: int = 4) -> list[pb.Tensor]:  # fmt: skip
        """Several private steps, (hidden, positions) each, pipelined: up to `window` in flight, so
        a replay (verification's catch-up) pays the route's time per step, not a client round trip."""
        if not self.private:
            raise InvalidRequest("hidden-state steps belong to private sessions")
        assert self._call is not None and self._frames is not None, "open the session first"
        answers: list[pb.Tensor] = []
        position, written = self.length, 0
        while len(answers) < len(steps):
            while written < len(steps) and written - len(answers) < window:
                hidden, positions = steps[written]
                step = pb.Step(step=self._step + written - len(answers), position=position, hidden=hidden)
                try:
                    await self._call.write(self._frames.seal(pb.SessionRequest(step=step)))
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    break  # the node ended the stream: the read below says why
                position, written = position + positions, written + 1
            reply = await self._exchange(None, timeout)
            answers.append(self._hidden_answer(reply, *steps[len(answers)]))
        return answers

    def _hidden_answer(self, reply: pb.SessionReply, sent: pb.Tensor, positions: int) -> pb.Tensor:
        """The hidden states answering a private step of `positions` (`sent`), checked: the wire
        dtype, the step's hidden size, its last position (or all of them when the client runs
        the last layers). A bad one blames the last node, so recovery routes around it."""
        self._answer(reply, positions)
        answer = reply.result.hidden
        want = positions if self._open.client_layers else 1
        try:
            if not reply.result.HasField("hidden"):
                raise InvalidRequest("no hidden states")
            from_wire(answer, (1, want, sent.shape[2]), (self._open.wire_dtype or "float32",))
        except InvalidRequest as exc:
            failed = PeerUnavailable(f"{self.route[-1].address} answered a private step wrongly: {exc}")
            failed.node_id = self.route[-1].node_id  # type: ignore[attr-defined]
            raise failed from exc
        return answer

    def _check(self, params: SamplingParams) -> None:
        if self.private:
            raise InvalidRequest("a private session's client samples: it sends hidden states only")
        if params != self.sampling:
            raise InvalidRequest("sampling parameters are fixed when a session opens")
        if self._following:
            raise InvalidRequest("the route is still following on from the last token; read its answers first")
        if self._ahead:
            raise InvalidRequest("verify steps are still on their way; read their answers first")

    async def _send(self, ids: Sequence[int], follow: int, stop_ids: Sequence[int], timeout: float | None) -> int:
        step = pb.Step(step=self._step, position=self.length, tokens=pb.TokenIds(ids=list(ids)),
                       follow=follow, stop_ids=list(stop_ids) if follow else [])  # fmt: skip
        self._following, self._stop_ids = follow, frozenset(stop_ids)
        return self._answer(await self._exchange(pb.SessionRequest(step=step), timeout), len(ids))

    async def _receive(self, timeout: float | None) -> int:
        """The answer to a step the first node took by itself (one token, fed back)."""
        self._following -= 1
        return self._answer(await self._exchange(None, timeout), 1)

    def _answer(self, reply: pb.SessionReply, tokens: int) -> int:
        """The token in `reply`, the answer to the step of `tokens` ids this session is at."""
        if reply.WhichOneof("kind") != "result" or reply.result.step != self._step:
            raise PeerUnavailable(f"{self.route[0].address} answered out of turn")
        self._step += 1
        self.length += tokens
        if reply.result.HasField("logits"):
            self.last_logits = from_wire(reply.result.logits, (None,))
        self._stats.hop_ms.append([t.compute_ms for t in reply.result.timings[: len(self.route)]])
        token = int(reply.result.token)
        if token in self._stop_ids:
            self._following = 0  # the first node stopped there
        return token

    async def _exchange(self, request: pb.SessionRequest | None, timeout: float | None = None) -> pb.SessionReply:
        """Send `request` (None: nothing) and read the answer."""
        first = self.route[0].address
        timeout = timeout or self._timeout
        assert self._call is not None and self._frames is not None, "open the session first"
        try:
            async with asyncio.timeout(timeout):
                if request is not None:
                    await self._call.write(self._frames.seal(request))
                reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            if not self._call.done():
                raise error_from_rpc(exc, first) from exc
            reply = grpc.aio.EOF  # a write raced the node ending the stream: its status says why
        except asyncio.InvalidStateError:  # the node already ended the stream
            reply = grpc.aio.EOF
        except TimeoutError as exc:
            raise StepTimeout(f"route through {first} did not answer within {timeout:.1f}s") from exc
        if reply is grpc.aio.EOF:
            # the stream ended without an answer: its status says why
            code, details = await self._call.code(), await self._call.details()
            metadata = await self._call.trailing_metadata()
            node = next((str(v) for k, v in metadata or () if k == FAILED_NODE_KEY), None)
            raise error_from_status(code, details or "session ended", first, node)
        try:
            return self._frames.open(reply)
        except SwarmError as exc:  # the first node sent a frame we cannot trust: route around it
            failed = PeerUnavailable(f"{first} sent a bad frame: {exc}")
            failed.node_id = self.route[0].node_id  # type: ignore[attr-defined]
            raise failed from exc

    async def close(self) -> None:
        if not self._closed and self.on_close is not None:
            self.on_close(self.route)
        self._closed = True
        if self._call is not None and not self._call.done():
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._call.done_writing()
            self._call.cancel()
