"""gRPC plumbing shared by clients and nodes: channel options, limits, error translation."""

from __future__ import annotations

import grpc

from swarm.errors import (
    CapacityExceeded,
    InvalidRequest,
    PeerUnavailable,
    SessionExpired,
    StaleRoute,
    SwarmError,
)

# Trailing-metadata key naming the node that failed, so a client knows which hop to replace.
FAILED_NODE_KEY = "swarm-failed-node"
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),  # notice a vanished peer on an idle stream
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def insecure_channel(address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))


_STATUS_FOR_ERROR: list[tuple[type[SwarmError], grpc.StatusCode]] = [
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
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return StaleRoute(f"{peer}: {details}")
    failed = PeerUnavailable(f"{peer} failed ({code.name}): {details}")
    failed.node_id = node_id  # type: ignore[attr-defined]
    return failed
