"""gRPC plumbing shared by clients and nodes: channel options, limits, error translation, and
calls that carry the swarm credential (see swarm/auth.py) when the swarm has a key."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc

from swarm._proto import swarm_pb2_grpc as pb_grpc
from swarm.auth import AUTH_KEY, Credentials, Proof, new_exchange, session_keys
from swarm.errors import (
    AuthenticationError,
    CapacityExceeded,
    InvalidRequest,
    PeerUnavailable,
    SessionExpired,
    StaleRoute,
    SwarmError,
)
from swarm.frames import Frames, PlainFrames, SealedFrames

# Trailing-metadata key naming the node that failed, so a client knows which hop to replace.
FAILED_NODE_KEY = "swarm-failed-node"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


@dataclass(frozen=True)
class Keepalive:
    """The ping policy of both ends: clients ping no more often than servers accept.

    A gRPC server answers pings that come more often than it allows (by default one per 5 minutes
    on an idle connection) with strikes, then GOAWAY "too_many_pings" (ENHANCE_YOUR_CALM), which
    drops the connection and makes the C core log over a user's terminal."""

    time_s: float = 20.0  # idle time before a ping: notice a vanished peer on an idle stream
    timeout_s: float = 10.0  # a ping unanswered this long means the connection is dead

    @property
    def accepted_interval_ms(self) -> int:
        """What a server accepts: half the clients' interval, so timer jitter is never a strike."""
        return int(self.time_s * 500)


KEEPALIVE = Keepalive()


def _message_limits(max_message_bytes: int, max_send_bytes: int | None = None) -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]  # fmt: skip


def _pings(keepalive: Keepalive) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", int(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                    keepalive: Keepalive = KEEPALIVE) -> list[tuple[str, int]]:  # fmt: skip
    """Options of a channel to a node (clients, and nodes calling their next hop)."""
    return _message_limits(max_message_bytes) + _pings(keepalive)


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_send_bytes: int | None = None,
                   keepalive: Keepalive = KEEPALIVE) -> list[tuple[str, int]]:  # fmt: skip
    """Options of a node's server: it pings its callers as they ping it, and accepts their pings,
    with or without a call in flight (`keepalive_permit_without_calls` is what a server checks too).
    `max_send_bytes` (default: the receive limit) lets a node send what it never accepts, such as
    its package's tokenizer."""
    return [
        *_message_limits(max_message_bytes, max_send_bytes),
        *_pings(keepalive),
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive.accepted_interval_ms),
    ]


def insecure_channel(address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))


class ChannelPool:
    """One channel per address, shared by every call to it (a client's, or a node's to its next
    hops); `close()` closes them all."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._max_message_bytes = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = insecure_channel(address, self._max_message_bytes)
        return self._channels[address]

    def stub(self, address: str) -> pb_grpc.SwarmNodeStub:
        return pb_grpc.SwarmNodeStub(self.get(address))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


_STATUS_FOR_ERROR: list[tuple[type[SwarmError], grpc.StatusCode]] = [
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (StaleRoute, grpc.StatusCode.FAILED_PRECONDITION),  # before PeerUnavailable, its parent
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SessionExpired, grpc.StatusCode.NOT_FOUND),
    (PeerUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(error: SwarmError) -> grpc.StatusCode:
    for kind, code in _STATUS_FOR_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def failed_node(error: grpc.aio.AioRpcError) -> str | None:
    for key, value in error.trailing_metadata() or ():
        if key == FAILED_NODE_KEY:
            return str(value)
    return None


def error_from_rpc(error: grpc.aio.AioRpcError, peer: str) -> SwarmError:
    """The SwarmError a failed call stands for, naming the peer."""
    return error_from_status(error.code(), error.details() or "", peer, failed_node(error))


def error_from_status(code: grpc.StatusCode, details: str, peer: str, node_id: str | None = None) -> SwarmError:
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(f"{peer} refused the request: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityExceeded(f"{peer} is out of capacity: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return SessionExpired(f"{peer}: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"{peer} refused us: {details} (is the swarm key right?)")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return StaleRoute(f"{peer}: {details}")
    failed = PeerUnavailable(f"{peer} failed ({code.name}): {details}")
    failed.node_id = node_id  # type: ignore[attr-defined]
    return failed


def request_bytes(request: Any) -> bytes:
    """A request message as a credential is bound to it: both ends serialize it deterministically."""
    return bytes(request.SerializeToString(deterministic=True))


async def unary(stub_method: Any, method: str, request: Any, credentials: Credentials | None, timeout: float,
                node_id: str) -> Any:  # fmt: skip
    """`stub_method(request)` on node `node_id` (ANY_NODE for an Info to whoever answers), with our
    credential made for that node and this request; the callee's credential is checked before its
    answer is believed. Raises grpc.aio.AioRpcError as the plain call would."""
    return (await unary_from(stub_method, method, request, credentials, timeout, node_id))[0]


async def unary_from(stub_method: Any, method: str, request: Any, credentials: Credentials | None, timeout: float,
                     node_id: str) -> tuple[Any, Proof | None]:  # fmt: skip
    """`unary`, and who answered (the callee's checked credential; None in an open swarm)."""
    if credentials is None:
        return await stub_method(request, timeout=timeout), None
    metadata, transcript = credentials.call(method, node_id, request_bytes(request))
    call = stub_method(request, metadata=metadata, timeout=timeout)
    reply = await call
    return reply, credentials.check_reply(await call.initial_metadata(), method, transcript, node_id)


async def checked_stream(call: Any, method: str, transcript: bytes, credentials: Credentials,
                         peer: str, expected_node: str = "", timeout: float | None = None) -> Any:  # fmt: skip
    """Wait for a streaming call's initial metadata and check the callee's credential in it; when
    the callee ended the call instead (it refused us), raise the error it gave."""
    try:
        metadata = await asyncio.wait_for(call.initial_metadata(), timeout)
    except TimeoutError as exc:
        call.cancel()
        raise PeerUnavailable(f"{peer} did not answer the handshake within {timeout:.1f}s") from exc
    if not any(key == AUTH_KEY for key, _ in metadata or ()):
        code, details = await call.code(), await call.details()
        if code is not None and code != grpc.StatusCode.OK:
            raise error_from_status(code, details or "", peer)
    try:
        return credentials.check_reply(metadata, method, transcript, expected_node)
    except AuthenticationError as exc:  # it is not a member: route around it
        raise PeerUnavailable(f"{peer} failed authentication: {exc}") from exc


async def open_session_call(stub: Any, credentials: Credentials | None, peer: str, node_id: str,
                            timeout: float | None = None) -> tuple[Any, Frames]:  # fmt: skip
    """A Session stream to node `node_id` at `peer` and the frames to speak on it: sealed under
    fresh keys from an ephemeral X25519 exchange in a keyed swarm, plain in an open one."""
    if credentials is None:
        return stub.Session(), PlainFrames()
    private, x_public = new_exchange()
    metadata, transcript = credentials.call("Session", node_id, x_public=x_public)
    call = stub.Session(metadata=metadata)
    try:
        proof = await checked_stream(call, "Session", transcript, credentials, peer, node_id, timeout)
        keys = session_keys(credentials.key, private, proof.x_public, transcript, proof.transcript, caller=True)
    except BaseException:
        call.cancel()
        raise
    return call, SealedFrames(keys, caller=True)
