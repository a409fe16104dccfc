"""The host's control loop: read the device, decide, act on the node; meanwhile, rebalance.

Every `poll_interval_s` (and at once when the host app pushes a change) the supervisor reads
the device state, runs the policy, and applies the decision: leave (drain first), rejoin,
announce a lower capacity, pause or resume downloads. Joining, leaving and moving run as one
transition task at a time, so the loop keeps reading the device while a download runs.
While the node serves, the move loop every node runs (`node.rebalance`: checks in a row that
agree, a random wait, a second look) decides when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from android_bridge.config import HostConfig
from android_bridge.device import DeviceState, DeviceStateProvider
from android_bridge.events import EventLog
from android_bridge.lifecycle import NodeLifecycle, Phase
from android_bridge.policy import SETTLING, Decision, PolicyState, decide, evaluate
from node.rebalance import Rebalancer, RebalanceSettings
from node.server import RunningNode
from swarm.assignment import Move

log = logging.getLogger("swarm.android")


def _explained(decision: Decision) -> tuple[str, ...]:
    """The reasons without the settle countdown, which changes on every step."""
    return tuple(r for r in decision.reasons if not r.startswith(SETTLING))


class Supervisor:
    def __init__(self, config: HostConfig, provider: DeviceStateProvider, events: EventLog) -> None:
        self.config, self.provider, self.events = config, provider, events
        self.life = NodeLifecycle(config, events, self._download_gate)
        self.policy = PolicyState()
        self.device: DeviceState | None = None
        self.rebalancer = Rebalancer(RebalanceSettings(config.rebalance_interval_s, config.rebalance_min_gain,
                                                       config.rebalance_patience))  # fmt: skip
        self.last_move: str | None = None
        self._mover: asyncio.Task[None] | None = None  # the move loop of the node serving now
        self._mover_stop: asyncio.Event | None = None
        self._retry_at = 0.0
        self._transition: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pushed: DeviceState | None = None  # the latest state the app pushed
        self._stopping = False

    def _download_gate(self) -> str | None:
        """Why block downloads must wait now, or None. A state the app just pushed counts at once,
        between two chunks, before the loop has run the policy on it (tightening is immediate anyway)."""
        if self._stopping:
            return "the host is stopping"
        decisions = [self.policy.decision]
        if self._pushed is not None:
            decisions.append(evaluate(self._pushed, self.config.policy, out=self.policy.decision.leave))
        for decision in decisions:
            if not decision.downloads:
                return "; ".join(decision.reasons) or "downloads not allowed"
        return None

    # --- running ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.events.emit("starting", config=self.config.to_dict())
        self._loop_task = self._loop.create_task(self._run())

    def on_push(self) -> None:
        """The host app pushed a device change (any thread): act on it now."""
        self._pushed = self.provider.read()
        self.wake()

    def wake(self) -> None:
        """Re-evaluate now (thread-safe)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:  # a flag too: before 3.12, wait_for can swallow a cancel()
            try:
                await self.tick()
            except Exception as exc:  # one bad read or step must not end the host
                log.exception("supervisor step failed")
                self.events.emit("error", message=f"supervisor: {exc}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)
            self._wake.clear()

    async def stop(self) -> None:
        """Let a join in progress end (a download pauses at its next chunk, keeping its .part), then leave."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._stop_moves()
        if self._transition is not None:
            await self._transition  # _guarded: never raises
        await self.life.leave("stopped by the app")
        self.events.emit("stopped")

    # --- one step -------------------------------------------------------------------------

    async def read_device(self) -> DeviceState:
        try:
            self.device = await asyncio.to_thread(self.provider.read)
        except Exception as exc:  # keep the last good reading
            log.warning("reading the device state failed: %s", exc)
            if self.device is None:
                raise
        return self.device

    async def tick(self) -> None:
        state = await self.read_device()
        before = self.policy.decision
        self.policy = decide(state, self.config.policy, self.policy, time.monotonic())
        decision = self.policy.decision
        if decision.key() != before.key() or _explained(decision) != _explained(before):
            self.events.emit("decision", **decision.to_dict())
        if self._transition is not None and not self._transition.done():
            return  # joining (its downloads ask the gate themselves), leaving or moving
        if decision.leave:
            if self.life.node is not None:
                await self._stop_moves()
                self._begin(self.life.leave("; ".join(decision.reasons)))
            return
        if self.life.set_capacity(decision.capacity) and self.life.node is not None:
            self.events.emit("capacity", capacity=decision.capacity, reasons=list(decision.reasons))
        if self.life.node is None:
            self._maybe_join(decision.downloads)
        elif self.config.rebalance:
            self._watch_moves()

    def _begin(self, work: Any) -> None:
        assert self._loop is not None
        self._transition = self._loop.create_task(self._guarded(work))

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:
            log.exception("node transition failed")
            self.life.phase, self.life.error = Phase.ERROR, str(exc)
            self.events.emit("error", message=str(exc))
        if self.life.phase is Phase.ERROR:
            self._retry_at = time.monotonic() + self.config.retry_s
        self.wake()  # decide again with the new phase

    def _maybe_join(self, downloads: bool) -> None:
        if time.monotonic() < self._retry_at:
            return
        if self.life.phase is Phase.PAUSED and not downloads:
            return  # resumes when the gate opens
        self._begin(self.life.join())

    # --- rebalancing ----------------------------------------------------------------------

    def _watch_moves(self) -> None:
        """Run the move loop for the node serving now, unless it runs already."""
        node = self.life.node
        if node is None or self._stopping or (self._mover is not None and not self._mover.done()):
            return
        assert self._loop is not None
        self._mover_stop = asyncio.Event()
        self._mover = self._loop.create_task(self._await_move(node, self._mover_stop))

    async def _await_move(self, node: RunningNode, stop: asyncio.Event) -> None:
        """Wait for the node's move loop to decide on a move (node/rebalance.py), then make it."""
        try:
            move = await self.rebalancer.wait_for_move(node, stop)
        except Exception as exc:  # a failed look must not end the host; the next tick starts a new loop
            log.exception("rebalance check failed")
            self.events.emit("error", message=f"rebalance: {exc}")
            return
        busy = self._stopping or (self._transition is not None and not self._transition.done())
        if move is None or busy or self.life.node is not node:
            return  # stopped, or the policy took over meanwhile: a new loop decides afresh
        self.last_move = move.reason
        self._begin(self._move(move))

    async def _stop_moves(self) -> None:
        mover, stop = self._mover, self._mover_stop
        self._mover = self._mover_stop = None
        if mover is not None and stop is not None:
            stop.set()  # the loop ends at its next wait, without a cancel() that wait_for may swallow
            await mover

    async def _move(self, move: Move) -> None:
        start, end = move.span
        self.events.emit("moving", start=start, end=end, reason=move.reason)
        await self.life.move(move.span, f"moving to layers [{start}, {end})")

    def status(self) -> dict[str, Any]:
        pending = self.policy.pending
        return {
            **self.life.status(),
            "decision": self.policy.decision.to_dict(),
            "pending": pending.to_dict() if pending is not None else None,
            "device": self.device.to_dict() if self.device is not None else None,
            "rebalance": {"enabled": self.config.rebalance, "candidate": self.rebalancer.advice.candidate,
                          "streak": self.rebalancer.advice.streak, "last_move": self.last_move},
            "events": self.events.count,
        }
