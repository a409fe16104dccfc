"""The client's side of one session stream through a route of nodes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence

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
from swarm.tensors import from_wire
from swarm.transport import FAILED_NODE_KEY, error_from_rpc, error_from_status, open_session_call

PROTOCOL_VERSION = pb.PROTOCOL_VERSION_CURRENT


class StepTimeout(PeerUnavailable):
    """A step got no answer within its deadline: some hop of the route stalled."""


def _sampling_message(params: SamplingParams) -> pb.Sampling:
    return pb.Sampling(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, seed=params.seed)


class RemoteSession:
    """Opens the session along `route`, then each `step` sends ids and gets the sampled token."""

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
        self._stop_ids: frozenset[int] = frozenset()
        self._last_token = -1
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
            sampling=_sampling_message(sampling),
            return_logits=return_logits,
        )
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

    async def step(
        self, ids: Sequence[int], params: SamplingParams, timeout: float | None = None,
        follow: int = 0, stop_ids: Sequence[int] = (),
    ) -> int:  # fmt: skip
        """Append `ids` and return the sampled next token. With `follow`, the first node goes on by
        itself, feeding each token back for up to `follow` more steps (ending after one of
        `stop_ids`); while it does, a step with the token last returned only reads its answer."""
        if params != self.sampling:
            raise InvalidRequest("sampling parameters are fixed when a session opens")
        if self._following and list(ids) == [self._last_token]:
            reply = await self._exchange(None, timeout)  # the first node fed it in already
            self._following -= 1
        elif self._following:
            raise InvalidRequest("the route is still following on from the last token; step with that token")
        else:
            follow = max(min(follow, self._open.max_length - self.length - len(ids)), 0)
            step = pb.Step(step=self._step, position=self.length, tokens=pb.TokenIds(ids=list(ids)),
                           follow=follow, stop_ids=list(stop_ids))  # fmt: skip
            reply = await self._exchange(pb.SessionRequest(step=step), timeout)
            self._following, self._stop_ids = follow, frozenset(stop_ids)
        if reply.WhichOneof("kind") != "result" or reply.result.step != self._step:
            raise PeerUnavailable(f"{self.route[0].address} answered out of turn")
        self._step += 1
        self.length += len(ids)
        if reply.result.HasField("logits"):
            self.last_logits = from_wire(reply.result.logits, (None,))
        self._last_token = int(reply.result.token)
        if self._last_token in self._stop_ids:
            self._following = 0  # the first node stopped there
        return self._last_token

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
