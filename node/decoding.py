"""Requests that do not parse: answered INVALID_ARGUMENT, logged as one warning line, rate-limited.

gRPC decodes a request before the servicer sees it, and when protobuf refuses the bytes it logs
a traceback at error level and answers UNKNOWN, once per message: anyone who can connect could
fill a node's log. A server interceptor gives every handler a deserializer that turns such bytes
into an `Undecodable` value instead, and wraps the handler so that value never reaches the
servicer: the call ends with INVALID_ARGUMENT and the node logs one line per peer per interval,
counting the ones it left out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from node.admission import peer_host
from swarm.errors import InvalidRequest

log = logging.getLogger("swarm.node")
WARN_INTERVAL_S = 60.0  # at most one line per peer this often
MAX_TRACKED_PEERS = 4096


@dataclass(frozen=True)
class Undecodable:
    """What a request that protobuf cannot parse becomes: never handed to the servicer."""

    size: int  # bytes received
    error: str  # protobuf's reason


class RateLimitedWarnings:
    """One warning per key per `interval_s`; those in between are counted and told with the next."""

    def __init__(self, logger: logging.Logger, interval_s: float = WARN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._log, self._interval, self._clock = logger, interval_s, clock
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (logged at, left out since)

    def warn(self, key: str, message: str) -> None:
        now = self._clock()
        logged_at, left_out = self._last.pop(key, (float("-inf"), 0))
        if now - logged_at < self._interval:
            self._last[key] = (logged_at, left_out + 1)
            return
        if left_out:
            message += f" ({left_out} more like it in the {now - logged_at:.0f}s since the last line)"
        self._log.warning(message)
        self._last[key] = (now, 0)
        while len(self._last) > MAX_TRACKED_PEERS:
            self._last.popitem(last=False)


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:  # the bytes came from the network: not our error to trace
            return Undecodable(len(raw), str(exc))

    return parse


class UndecodableRequests(grpc.aio.ServerInterceptor):
    """Gives each handler the tolerant deserializer, and refuses what it could not decode."""

    def __init__(self, warnings: RateLimitedWarnings | None = None) -> None:
        self.warnings = warnings or RateLimitedWarnings(log)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_unary(method, handler.unary_unary), parse, handler.response_serializer)  # fmt: skip
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream), parse, handler.response_serializer)  # fmt: skip
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream_stream(method, handler.stream_stream), parse, handler.response_serializer)  # fmt: skip
        return handler  # client streaming: the service has none

    def _refusal(self, method: str, bad: Undecodable, context: grpc.aio.ServicerContext) -> str:
        """Log (rate-limited) and word the refusal of an undecodable `method` message."""
        peer = peer_host(context.peer())
        self.warnings.warn(peer, f"undecodable {method} message from {peer} ({bad.size} bytes): {bad.error}; "
                                 "answered INVALID_ARGUMENT")  # fmt: skip
        return f"could not decode the {method} message: {bad.error}"

    def _unary_unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if type(request) is Undecodable:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._refusal(method, request, context))
            return await behavior(request, context)

        return guarded

    def _unary_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if type(request) is Undecodable:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._refusal(method, request, context))
            async with contextlib.aclosing(behavior(request, context)) as replies:
                async for reply in replies:
                    yield reply

        return guarded

    def _stream_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async def decoded() -> AsyncIterator[Any]:
                async for request in requests:
                    if type(request) is Undecodable:  # the servicer ends the stream with INVALID_ARGUMENT
                        raise InvalidRequest(self._refusal(method, request, context))
                    yield request

            async with contextlib.aclosing(behavior(decoded(), context)) as replies:
                async for reply in replies:
                    yield reply

        return guarded
