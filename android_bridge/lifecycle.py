"""One node on this device: join (fetching blocks), serve, leave gracefully, come back, move.

Runs on the host's asyncio loop. Leaving is the node's own shutdown path (node/server.py):
withdraw the announcement, refuse new sessions, let live ones finish for `drain_timeout_s`,
then stop. Coming back is serving again on the same port with the same identity. Moving is
leaving and serving the new span, as every node moves (node/rebalance.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any

from android_bridge.config import HostConfig
from android_bridge.events import EventLog
from node.block_store import DownloadPaused
from node.config import NodeConfig
from node.join import prepare
from node.rebalance import moved
from node.server import RunningNode, serve
from swarm.errors import SwarmError

PROGRESS_EVERY_S = 0.5  # at most one downloading event per file this often


class Phase(StrEnum):
    IDLE = "idle"  # not started yet
    JOINING = "joining"  # finding the swarm, choosing a span, loading blocks
    PAUSED = "paused"  # a block download waits for the policy to allow it
    SERVING = "serving"
    DRAINING = "draining"  # leaving: unannounced, live sessions finishing
    LEFT = "left"  # out of the swarm, by the policy's decision
    ERROR = "error"  # the last join failed; the host retries


class NodeLifecycle:
    def __init__(self, config: HostConfig, events: EventLog, download_gate: Callable[[], str | None]) -> None:
        """`download_gate()`: None when block downloads may run, else why not."""
        self.config = config
        self.base = config.node_config()
        self.events = events
        self._gate = download_gate
        self.node: RunningNode | None = None
        self.serving: NodeConfig | None = None  # what the node serves now, or served last
        self._stack: contextlib.AsyncExitStack | None = None
        self.phase = Phase.IDLE
        self.error: str | None = None
        self.port = self.base.port  # the first bound port, kept so peers find us again
        self.capacity = 1.0
        self._reported: dict[str, float] = {}

    def _progress(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._reported.get(name, 0.0) < PROGRESS_EVERY_S:
            return
        self._reported[name] = now
        self.events.emit("downloading", file=name, bytes_done=done, bytes_total=total)

    def _allowed(self) -> bool:
        return self._gate() is None

    async def _prepared(self, config: NodeConfig) -> NodeConfig:
        """`config` with a package that holds its files: with no model, fetched from the swarm
        (downloads reported as events, paused while the gate says so)."""
        if config.model is not None:
            return config
        return await prepare(config, quiet=True, progress=self._progress, allowed=self._allowed)

    async def join(self, span: tuple[int, int] | None = None) -> bool:
        """Fetch what is missing, then serve. False when paused or failed (see `phase`)."""
        return await self._serve(self._prepared(replace(self.base, port=self.port, span=span or self.base.span)))

    async def move(self, span: tuple[int, int], reason: str) -> bool:
        """Leave, then serve `span` on the same port, fetching what it lacks; the old layers again
        when those files cannot be had (`node.rebalance.moved`, as a plain node does)."""
        old = self.serving
        if old is None:
            return False
        await self.leave(reason)
        return await self._serve(moved(old, span, self._prepared))

    async def _serve(self, prepared: Awaitable[NodeConfig]) -> bool:
        """Serve the config `prepared` gives; False when it paused or failed (see `phase`)."""
        self.phase, self.error = Phase.JOINING, None
        try:
            config = await prepared
            stack = contextlib.AsyncExitStack()
            node = await stack.enter_async_context(serve(config))
        except DownloadPaused as exc:
            self.phase = Phase.PAUSED
            self.events.emit("paused", reason=self._gate() or "downloads not allowed", detail=str(exc))
            return False
        except (SwarmError, OSError) as exc:
            self.phase, self.error = Phase.ERROR, str(exc)
            self.events.emit("error", message=str(exc))
            return False
        self.node, self._stack, self.port = node, stack, node.port
        self.serving = replace(config, port=node.port)  # a move or a fallback comes back on the same port
        node.set_capacity_scale(self.capacity)
        self.phase = Phase.SERVING
        span_now = node.servicer.span
        self.events.emit("joined", node_id=node.node_id, address=node.address, model=span_now.package.package_id)
        self.events.emit("serving", start=span_now.start, end=span_now.end, capacity=node.capacity_scale)
        return True

    async def leave(self, reason: str) -> None:
        """Unannounce, drain (bounded by drain_timeout_s), stop. Nothing to do when not serving."""
        node, stack = self.node, self._stack
        if node is None or stack is None:
            return
        self.phase = Phase.DRAINING
        self.events.emit("draining", reason=reason, sessions=len(node.sessions.sessions))
        try:
            await stack.aclose()
        finally:
            self.node, self._stack, self.phase = None, None, Phase.LEFT
            self.events.emit("left", reason=reason, node_id=node.node_id)

    def set_capacity(self, scale: float) -> bool:
        """Announce `scale` of the measured speed from now on; True when that changed anything."""
        changed = scale != self.capacity
        self.capacity = scale
        if self.node is not None and changed:
            self.node.set_capacity_scale(scale)
        return changed

    def status(self) -> dict[str, Any]:
        node = self.node
        out: dict[str, Any] = {"phase": self.phase.value, "capacity": self.capacity, "error": self.error,
                               "port": self.port or None}  # fmt: skip
        if node is not None:
            span = node.servicer.span
            out.update(node_id=node.node_id, address=node.address, model=span.package.package_id,
                       span=[span.start, span.end], sessions=len(node.sessions.sessions),
                       measured_steps_per_s=round(node.speed, 2),
                       announced_steps_per_s=round(node.speed * node.capacity_scale, 2))  # fmt: skip
        return out
