"""The host's control loop: read the device, decide, act on the node; now and then, rebalance.

Every `poll_interval_s` (and at once when the host app pushes a change) the supervisor reads
the device state, runs the policy, and applies the decision: leave (drain first), rejoin,
announce a lower capacity, pause or resume downloads. Joining, leaving and moving run as one
transition task at a time, so the loop keeps reading the device while a download runs.
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
        self._next_rebalance = 0.0
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
                self._begin(self.life.leave("; ".join(decision.reasons)))
            return
        if self.life.set_capacity(decision.capacity) and self.life.node is not None:
            self.events.emit("capacity", capacity=decision.capacity, reasons=list(decision.reasons))
        if self.life.node is None:
            self._maybe_join(decision.downloads)
        elif self.config.rebalance and time.monotonic() >= self._next_rebalance:
            self._next_rebalance = time.monotonic() + self.config.rebalance_interval_s
            self.rebalance()

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

    def rebalance(self) -> None:
        """Move to the swarm's bottleneck layers when that clearly and persistently helps
        (the rule every node applies: node/rebalance.py)."""
        node = self.life.node
        if node is None:
            return
        move = self.rebalancer.check(node)
        if move is not None:
            self.last_move = move.reason
            self._begin(self._move(move.span, move.reason))

    async def _move(self, span: tuple[int, int], reason: str) -> None:
        self.events.emit("moving", start=span[0], end=span[1], reason=reason)
        await self.life.leave(f"moving to layers [{span[0]}, {span[1]})")
        await self.life.join(span)

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
