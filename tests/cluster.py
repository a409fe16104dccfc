"""Real nodes in this process, on 127.0.0.1 and port 0, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from node.config import NodeConfig
from node.server import RunningNode, serve
from swarm._loop import BackgroundLoop
from swarm._proto import swarm_pb2 as pb
from swarm.auth import Credentials, Metadata
from swarm.keys import Identity, SwarmKey
from swarm.origin import sign_origin
from swarm.transport import request_bytes

# the swarm every test node and client is in, unless a test says otherwise (conftest puts it
# in $SWARM_KEY too, so SDK clients and node processes started by tests use it)
TEST_SWARM_KEY = SwarmKey(hashlib.sha256(b"swarm test suite").digest())


def member_credentials() -> Credentials:
    """A fresh member of the test swarm, for tests that call nodes by hand."""
    return Credentials(TEST_SWARM_KEY, Identity.generate())


def member_metadata(method: str, node_id: str, request: Message | None = None) -> Metadata:
    """Call metadata of a fresh member of the test swarm, made for `method` with `request` on node
    `node_id` (ANY_NODE: whoever answers, for Info only)."""
    return member_credentials().call(method, node_id, request_bytes(request) if request is not None else b"")[0]


def signed(credentials: Credentials, request: pb.SessionRequest) -> pb.SessionRequest:
    """`request`, when it opens a session, signed as opened by `credentials` (as RemoteSession does)."""
    if request.WhichOneof("kind") != "open":
        return request
    copy = pb.SessionRequest()
    copy.CopyFrom(request)
    sign_origin(credentials, copy.open)
    return copy


class LocalCluster:
    """Nodes on a loop thread of their own; `stop()` shuts them all down."""

    def __init__(self) -> None:
        self.loop = BackgroundLoop("test-nodes")
        self._stack = contextlib.AsyncExitStack()
        self.nodes: list[RunningNode] = []

    def start(self, model: Path, span: tuple[int, int] | None = None, **options: Any) -> RunningNode:
        options.setdefault("mdns", False)  # tests that want discovery turn it on, on 127.0.0.1 only
        options.setdefault("threads", 1)
        options.setdefault("swarm_key", TEST_SWARM_KEY)
        config = NodeConfig(model=model, span=span, host="127.0.0.1", port=0, **options)

        async def enter() -> RunningNode:
            return await self._stack.enter_async_context(serve(config))

        node = self.loop.run(enter())
        self.nodes.append(node)
        return node

    def start_chain(self, model: Path, spans: Sequence[tuple[int, int]], **options: Any) -> list[RunningNode]:
        return [self.start(model, span, **options) for span in spans]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def stop_node(self, node: RunningNode) -> None:
        async def stop() -> None:
            await node.server.stop(grace=0)

        self.loop.run(stop())

    def stop(self) -> None:
        async def close() -> None:
            await self._stack.aclose()

        try:
            self.loop.run(close())
        finally:
            self.loop.close()
