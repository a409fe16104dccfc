"""A node that chose its own span keeps choosing: now and then it checks whether the swarm
needs it elsewhere, and moves when the gain is clear and persistent.

The one move loop of every node, the plain `swarm-node join` and the Android host alike:
`Rebalancer.wait_for_move` decides (the rule is `swarm.assignment.check_move`, pure, with
hysteresis through `advise_move`; then a random wait and a second look), `moved` gives the
config to serve next. Moving is leaving and joining again: the announcement is withdrawn first
(clients route new sessions elsewhere; the layers dropped are still served by others, or the
rule would not move), live sessions drain, then the node serves the new span on the same port
with the same identity, fetching the block files it lacks from peers, or its old layers again
when those files cannot be had.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from node.config import NodeConfig
from node.join import max_layers, missing_files, prepare
from node.server import RunningNode, serve
from swarm.assignment import Move, MoveAdvice, Served, check_move
from swarm.errors import SwarmError
from swarm.package import load_package
from swarm.progress import Progress

log = logging.getLogger("swarm.node")


@dataclass(frozen=True)
class RebalanceSettings:
    interval_s: float = 30.0  # between checks
    min_gain: float = 0.2  # the swarm's slowest stage must get this much faster
    patience: int = 3  # consecutive checks that agree before a move


class Rebalancer:
    """One node's running view of whether to move."""

    def __init__(self, settings: RebalanceSettings) -> None:
        self.settings = settings
        self.advice = MoveAdvice()

    def check(self, node: RunningNode) -> Move | None:
        """One periodic check: a Move once `patience` checks in a row agreed on it."""
        self.advice, move = self._check(node, self.advice, self.settings.patience)
        return move

    def still_wanted(self, node: RunningNode, move: Move) -> bool:
        """Whether `move` still helps as the swarm looks now (a single look, no streak)."""
        _, again = self._check(node, MoveAdvice(), patience=1)
        return again is not None and again.span == move.span

    def _check(self, node: RunningNode, advice: MoveAdvice, patience: int) -> tuple[MoveAdvice, Move | None]:
        if node.presence is None or node.speed <= 0:
            return advice, None  # no view of the swarm (mDNS off) or no measurement
        span = node.servicer.span
        manifest = span.package.manifest
        edges = [b.start for b in manifest.blocks] + [manifest.num_layers]
        peers = node.presence.membership.live(span.package.package_id)
        others = [Served(p.start, p.end, 1000 / p.speed if p.speed > 0 else 0.0)
                  for p in peers if p.node_id != node.node_id]  # fmt: skip
        layer_ms = 1000 / node.servicer.capacity.steps_per_s / (span.end - span.start)
        limit = max_layers(span.package, node.config.max_memory)
        return check_move(advice, edges, others, (span.start, span.end), layer_ms, limit, self.settings.min_gain,
                          patience)  # fmt: skip

    async def wait_for_move(self, node: RunningNode, stop: asyncio.Event) -> Move | None:
        """Check every interval until a move is due (the Move) or `stop` is set (None)."""
        while await self._sleep(stop, self.settings.interval_s):
            if (move := self.check(node)) is None:
                continue
            # Replicas see the same swarm and may decide together; had two of them both left the
            # same layers, those could go uncovered. A random wait, then a second look, lets the
            # one that moves first be seen leaving by the others (its record is withdrawn).
            if await self._sleep(stop, random.uniform(0, self.settings.interval_s)) and self.still_wanted(node, move):
                return move
        return None

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
        """Wait `seconds`; False when `stop` was set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return not stop.is_set()


async def serve_and_rebalance(config: NodeConfig, stop: asyncio.Event, settings: RebalanceSettings | None,
                              on_serving: Callable[[RunningNode], None] = lambda node: None,
                              progress: Progress | None = None) -> None:  # fmt: skip
    """Serve `config` until `stop`; with `settings`, move to better spans on the way."""
    rebalancer = Rebalancer(settings) if settings is not None else None
    while True:
        async with serve(config, progress) as node:
            on_serving(node)
            move = await rebalancer.wait_for_move(node, stop) if rebalancer else None
            if move is None:
                await stop.wait()
                log.info("leaving: withdrawing the announcement, draining %d sessions (at most %gs)",
                         len(node.sessions.sessions), config.drain_timeout_s)  # fmt: skip
                return
            log.warning("moving to layers [%d, %d): %s; draining %d sessions first", *move.span, move.reason,
                        len(node.sessions.sessions))  # fmt: skip
            config = replace(config, port=node.port)
        config = await moved(config, move.span)


Fetch = Callable[[NodeConfig], Awaitable[NodeConfig]]  # a config with no model -> one whose package holds the files


async def _fetch_quietly(config: NodeConfig) -> NodeConfig:
    return await prepare(config, quiet=True)


async def moved(config: NodeConfig, span: tuple[int, int], fetch: Fetch = _fetch_quietly) -> NodeConfig:
    """The config for serving `span` instead of what `config` serves (its files fetched with
    `fetch` when the package lacks them); `config` itself when those files cannot be had."""
    try:
        return await _with_files(replace(config, span=span), fetch)
    except SwarmError as exc:  # e.g. no peer holds the blocks: better the old layers than none
        log.warning("cannot serve layers [%d, %d) (%s); serving the old layers again", *span, exc)
        return config


async def _with_files(config: NodeConfig, fetch: Fetch) -> NodeConfig:
    """`config`, its package now holding the files its span needs (fetched from peers if not)."""
    assert config.model is not None and config.span is not None
    package = load_package(config.model)
    if not missing_files(package, *config.span):
        return config
    fetched = await fetch(replace(config, model=None, model_id=package.package_id))
    return replace(fetched, port=config.port)
