"""A node's links to the other nodes of a session: the next hop, and the token ring's return link.

On a chain (no ring), each node exchanges every step with its next hop: it writes the step and
reads the result relayed back from the last node, so a token crosses 2(N-1) links. On a ring
(`OpenSession.ring_head`), nodes only write their steps onward; the last node sends each result
straight to the first over a return link, and a token crosses N links. Nothing comes back up a
ring's next-hop streams, so each node watches its next hop for a failure (an ended stream, with
the node to blame in its trailing metadata) and raises it where it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials
from swarm.errors import InvalidRequest, SwarmError
from swarm.frames import Frames
from swarm.transport import ChannelPool, failed_node, open_session_call

_PASSED_THROUGH = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
)
T = TypeVar("T")


class HopFailed(SwarmError):
    """Another node of the session failed; carries the gRPC status to relay and the node to blame."""

    def __init__(self, code: grpc.StatusCode, message: str, node_id: str) -> None:
        super().__init__(message)
        self.code, self.node_id = code, node_id


def hop_failure(exc: grpc.aio.AioRpcError, hop: pb.Hop, role: str = "next hop") -> HopFailed:
    """`exc`, a call to `hop` that ended, as the failure to relay: its status when it is about the
    request, UNAVAILABLE otherwise, blaming the node the trailing metadata names (or `hop`)."""
    code = exc.code() if exc.code() in _PASSED_THROUGH else grpc.StatusCode.UNAVAILABLE
    return HopFailed(code, f"{role} {hop.address}: {exc.details()}", failed_node(exc) or hop.node_id)


async def unless_failed(awaitable: Awaitable[T], failure: asyncio.Future[HopFailed] | None) -> T:
    """`awaitable`'s result, unless `failure` comes first: then it is raised and `awaitable` cancelled."""
    if failure is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        waiters: list[asyncio.Future[Any]] = [task, failure]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.done() and not task.cancelled():
        return task.result()
    raise failure.result()


def _failure_future() -> asyncio.Future[HopFailed]:
    # the failure is the future's result, not its exception: a failure nobody waits for (the
    # session closed first) is then no "exception was never retrieved" at shutdown
    return asyncio.get_running_loop().create_future()


class Downstream:
    """This node's stream to the next hop of a session."""

    def __init__(self, hop: pb.Hop, call: grpc.aio.StreamStreamCall, frames: Frames, timeout_s: float) -> None:
        self.hop, self._call, self._frames, self._timeout = hop, call, frames, timeout_s
        self.failure: asyncio.Future[HopFailed] | None = None  # set by `watch`, on a ring
        self._watcher: asyncio.Task[None] | None = None

    async def exchange(self, request: pb.SessionRequest) -> pb.SessionReply:
        """Send `request` and read the next hop's answer (a chain, and every session's opening)."""
        await self.send(request)
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise hop_failure(exc, self.hop) from exc
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

    async def send(self, request: pb.SessionRequest) -> None:
        """Write `request` to the next hop (flow control may hold it up to the hop timeout)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._call.write(self._frames.seal(request))
        except grpc.aio.AioRpcError as exc:
            raise hop_failure(exc, self.hop) from exc
        except (TimeoutError, asyncio.InvalidStateError) as exc:
            if self.failure is not None and self.failure.done():  # the watcher knows why it ended
                raise self.failure.result() from exc
            message = f"next hop {self.hop.address} took no step within {self._timeout:.0f}s"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, self.hop.node_id) from exc

    def watch(self) -> asyncio.Future[HopFailed]:
        """On a ring: read the next hop's stream, where nothing should come, and resolve the
        returned future with the failure when the stream ends or says anything."""
        self.failure = _failure_future()
        self._watcher = asyncio.ensure_future(self._watch(self.failure))
        return self.failure

    async def _watch(self, failure: asyncio.Future[HopFailed]) -> None:
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            found = hop_failure(exc, self.hop)
        else:
            message = "closed" if reply is grpc.aio.EOF else "answered on a ring, where only the last node answers"
            found = HopFailed(grpc.StatusCode.UNAVAILABLE, f"next hop {self.hop.address} {message}", self.hop.node_id)
        if not failure.done():
            failure.set_result(found)

    def cancel(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        self._call.cancel()


class ReturnSlot:
    """At the head of a ring: where one session's results arrive from its last node, each for a step
    the head awaits (it expects a step before it sends it on, so no result can come early). Several
    verify steps may be awaited at once (pipelined speculation); their results come in order."""

    def __init__(self, last_hop: pb.Hop) -> None:
        self.last_hop = last_hop
        self.attached = False
        self.closed = False  # the session ended here
        self.failure = _failure_future()  # the return link broke, or the next hop failed
        self._awaited: dict[int, asyncio.Future[pb.StepResult]] = {}

    def attach(self, caller_node_id: str | None) -> None:
        """The return link of the last node arrived (`caller_node_id`: whom its credential proves)."""
        if caller_node_id is not None and caller_node_id != self.last_hop.node_id:
            raise InvalidRequest("only the last node of the session's route may return its results")
        if self.attached:
            raise InvalidRequest("this session already has its return link")
        self.attached = True

    def expect(self, step: int) -> None:
        self._awaited[step] = asyncio.get_running_loop().create_future()

    async def result(self, step: int, timeout_s: float, blamed: pb.Hop) -> pb.StepResult:
        """The result of `step` (`expect`ed), within `timeout_s` (else blaming `blamed`)."""
        future = self._awaited[step]
        try:
            async with asyncio.timeout(timeout_s):
                return await unless_failed(future, self.failure)
        except TimeoutError:
            message = f"step {step} did not come back round the ring within {timeout_s:.0f}s"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, blamed.node_id) from None
        finally:
            self._awaited.pop(step, None)

    def deliver(self, result: pb.StepResult) -> None:
        """A result from the return link: it must be the earliest awaited step's, and the first for it."""
        earliest = min((step for step, future in self._awaited.items() if not future.done()), default=None)
        if earliest is None or earliest != result.step:
            raise InvalidRequest(f"the return link sent step {result.step}, which is not awaited")
        self._awaited[earliest].set_result(result)

    def fail(self, failure: HopFailed) -> None:
        if not self.failure.done():
            self.failure.set_result(failure)

    def close(self) -> None:
        """The session ended: its return link has nothing more to carry."""
        self.closed = True
        self.fail(HopFailed(grpc.StatusCode.CANCELLED, "the session ended", self.last_hop.node_id))


class ReturnLink:
    """At the last node of a ring: the stream that carries each result to the ring's head."""

    def __init__(self, head: pb.Hop, call: grpc.aio.StreamStreamCall, frames: Frames, timeout_s: float) -> None:
        self.head, self._call, self._frames, self._timeout = head, call, frames, timeout_s

    @classmethod
    async def attach(cls, channels: ChannelPool, credentials: Credentials | None, head: pb.Hop, session_id: str,
                     timeout_s: float) -> ReturnLink:  # fmt: skip
        """Open the return link of `session_id` to `head` and wait for its acknowledgement."""
        try:
            call, frames = await open_session_call(channels.stub(head.address), credentials, head.address,
                                                   head.node_id, timeout_s)  # fmt: skip
        except (grpc.aio.AioRpcError, SwarmError) as exc:
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            message = f"ring head {head.address}: {details}"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, head.node_id) from exc
        link = cls(head, call, frames, timeout_s)
        try:
            await link.send(pb.SessionRequest(attach=pb.ReturnLink(session_id=session_id)))
            async with asyncio.timeout(timeout_s):
                reply = await call.read()
            if reply is grpc.aio.EOF or frames.open(reply).WhichOneof("kind") != "opened":
                raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"ring head {head.address} refused the return link",
                                head.node_id)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            call.cancel()
            raise hop_failure(exc, head, "ring head") from exc
        except (TimeoutError, SwarmError) as exc:
            call.cancel()
            if isinstance(exc, HopFailed):
                raise
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, f"ring head {head.address}: {exc or 'silent'}",
                            head.node_id) from exc  # fmt: skip
        return link

    async def send(self, request: pb.SessionRequest) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._call.write(self._frames.seal(request))
        except grpc.aio.AioRpcError as exc:
            raise hop_failure(exc, self.head, "ring head") from exc
        except (TimeoutError, asyncio.InvalidStateError) as exc:
            message = f"ring head {self.head.address} took no result within {self._timeout:.0f}s"
            raise HopFailed(grpc.StatusCode.UNAVAILABLE, message, self.head.node_id) from exc

    async def result(self, result: pb.StepResult) -> None:
        await self.send(pb.SessionRequest(returned=result))

    def cancel(self) -> None:
        self._call.cancel()


@dataclass
class SessionLinks:
    """What one session holds besides its caches: the next hop and, on a ring, its return path."""

    node_ids: list[str]  # the route as opened, from this node on
    downstream: Downstream | None = None
    slot: ReturnSlot | None = None  # the ring's head: where the last node's results arrive
    back: ReturnLink | None = None  # the ring's last node: where its results go
    # the ring's head: results of verify steps sent on and still to come round, in order
    ahead: deque[asyncio.Future[pb.StepResult]] = field(default_factory=deque)

    @property
    def failure(self) -> asyncio.Future[HopFailed] | None:
        """Resolves when another node of a ring fails (None on a chain: there each step sees it)."""
        return self.slot.failure if self.slot is not None else self.downstream.failure if self.downstream else None

    def close(self) -> None:
        for waiting in self.ahead:
            forget(waiting)
        for link in (self.downstream, self.back):
            if link is not None:
                link.cancel()
        if self.slot is not None:
            self.slot.close()


def forget(future: asyncio.Future[Any]) -> None:
    """Cancel `future`, or take its exception if it already failed (the session's own error says why)."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()
