"""Verification of remote computation: a private session's steps, re-checked on other replicas.

After a step is answered, the client draws (a seeded RNG of its own, never the sampling seed)
whether to check. A generation audits one span of its route, drawn among those with another live
replica, against a shadow route: the same route with that span's node swapped for the replica. A
step's answer depends on the whole sequence before it (every node's KV cache), so the shadow
session replays each step the client sent, as it was sent, and a check first catches it up on the
steps since the last check, pipelined: every step is compared, a check costs the steps it catches
up (in all at most one extra pass of the route per token, paid in bursts), and `verify_fraction`
sets how often that happens, and so how long a lie goes unseen. A recovery (a new route) draws the
audited span again and starts a new shadow.

Outputs are compared bit for bit when both replicas report the same machine (the same kernels;
recovery's exact replay rests on the same fact), else within `RTOL`/`ATOL` (docs/SECURITY.md).
On a disagreement a third party decides: a fresh session through a third replica of the span
replays the history up to the disputed step; the replica that disagrees with the two others is
banned for `VERIFY_BAN_S`, and when that is the route's own node the session recovers around it
(its replay on the new route replaces the answers it spoiled). With no third replica the client
cannot tell which of the two lied: it stops with VerificationFailed rather than go on trusting one.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from swarm._proto import swarm_pb2 as pb
from swarm.config import ClientConfig
from swarm.errors import InvalidRequest, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.recovery import Bans, Sent
from swarm.remote import RemoteSession
from swarm.routing import PeerView
from swarm.tensors import from_wire

log = logging.getLogger("swarm.verification")
VERIFY_BAN_S = 24 * 3600.0  # a node caught computing differently stays off this client's routes for a day
# across machines (another ISA's kernels round differently): float32 hidden states agree within
# this (docs/SECURITY.md says how it was measured)
RTOL, ATOL = 1e-3, 1e-4
CATCH_UP = 64  # steps a check replays at once (compared, then the next lot)


class VerificationFailed(SwarmError):
    """Two replicas disagree and nothing can tell which one computed honestly."""


class Checked(Protocol):
    """What verification needs of the swarm (the SDK's AsyncSwarm is one)."""

    peers: list[PeerView]
    bans: Bans

    async def open_session(
        self, request: GenerationRequest, stats: GenerationStats, route: list[PeerView] | None = None,
        timeout_s: float | None = None,
    ) -> RemoteSession: ...


def agree(ours: pb.Tensor, theirs: pb.Tensor, exact: bool) -> bool:
    """Whether two answers to the same step agree: the same bytes, or (`exact` off) the same
    shape and dtype and values within RTOL/ATOL. A malformed answer agrees with nothing."""
    if exact:
        return ours.dtype == theirs.dtype and list(ours.shape) == list(theirs.shape) and ours.data == theirs.data
    try:
        a = from_wire(ours, tuple(ours.shape), (ours.dtype,))
        b = from_wire(theirs, tuple(ours.shape), (ours.dtype,))
    except InvalidRequest:
        return False
    return bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))


@dataclass
class Shadow:
    """A shadow session: the route with one span's node swapped for another replica of it."""

    hop: int  # the route's hop whose node it replaces
    replica: PeerView
    session: RemoteSession
    synced: int = 0  # steps of the history it has replayed


class Verifier:
    """`check` after each answered step of a private session (RecoveringSession.audit)."""

    def __init__(self, swarm: Checked, config: ClientConfig, request: GenerationRequest, stats: GenerationStats,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        """`rng`: the client's, so that its generations check different steps (default: one of
        this verifier's own, seeded by `verify_seed`)."""
        check_verification(config)
        self._swarm, self._config, self._request, self._stats = swarm, config, request, stats
        self._rng = rng or random.Random(config.verify_seed)
        self._shadows: dict[int, Shadow] = {}
        self._route: list[PeerView] = []
        self._timeout = max(config.min_step_deadline_s, 10.0)

    async def check(self, history: Sequence[Sent], route: list[PeerView]) -> str | None:
        """Maybe check the steps so far; the node id of the route's node found lying, if any."""
        if self._rng.random() >= self._config.verify_fraction:
            return None
        if [p.node_id for p in route] != [p.node_id for p in self._route]:  # recovered: start over
            await self.close()
            self._route = list(route)
        if not self._shadows:
            hops = [hop for hop in range(len(route)) if self._replicas(hop)]
            if not hops:
                log.debug("no span of the route has another replica: nothing to check against")
                return None
            hop = self._rng.choice(hops)
        else:
            hop = next(iter(self._shadows))
        try:
            shadow = self._shadows.get(hop) or await self._shadow(hop)
            while shadow.synced < len(history):
                batch = history[shadow.synced : shadow.synced + CATCH_UP]
                steps = [(sent.hidden, sent.positions) for sent in batch if sent.hidden is not None]
                assert len(steps) == len(batch), "verification checks private steps"
                answers = await shadow.session.hidden_steps(steps, self._timeout)
                for sent, answer in zip(batch, answers, strict=True):
                    index = shadow.synced
                    shadow.synced += 1
                    self._stats.verified += 1
                    assert sent.answer is not None
                    if not agree(sent.answer, answer, self._exact(route[hop], shadow.replica)):
                        return await self._dispute(history, hop, index, answer)
        except VerificationFailed:
            raise
        except SwarmError as exc:  # the shadow's route failed or is full: not the generation's problem
            log.warning("the shadow session checking hop %d failed (%s); dropped", hop, exc)
            await self._drop(hop)
        return None

    async def close(self) -> None:
        for hop in list(self._shadows):
            await self._drop(hop)

    def _replicas(self, hop: int, besides: Sequence[str] = ()) -> list[PeerView]:
        """Live, unbanned replicas of the route's span at `hop`, other than its node and `besides`."""
        node = self._route[hop]
        banned = self._swarm.bans.banned(time.monotonic())
        return [p for p in self._swarm.peers
                if (p.start, p.end) == (node.start, node.end) and p.node_id != node.node_id
                and p.node_id not in banned and p.node_id not in besides]  # fmt: skip

    async def _shadow(self, hop: int) -> Shadow:
        replica = self._rng.choice(self._replicas(hop))
        shadow = Shadow(hop, replica, await self._open(hop, replica))
        self._shadows[hop] = shadow
        return shadow

    async def _open(self, hop: int, replica: PeerView) -> RemoteSession:
        route = [replica if i == hop else p for i, p in enumerate(self._route)]
        return await self._swarm.open_session(self._request, GenerationStats(), route, self._config.open_deadline_s)

    async def _drop(self, hop: int) -> None:
        shadow = self._shadows.pop(hop, None)
        if shadow is not None:
            await shadow.session.close()

    def _exact(self, a: PeerView, b: PeerView) -> bool:
        return a.machine == b.machine

    async def _dispute(self, history: Sequence[Sent], hop: int, index: int, theirs: pb.Tensor) -> str | None:
        """The route's node and the shadow's replica answered step `index` differently: a third
        replica replays the history up to it, and the odd one out is banned."""
        self._stats.mismatches += 1
        accused, other = self._route[hop], self._shadows[hop].replica
        ours = history[index].answer
        assert ours is not None
        await self._drop(hop)
        thirds = self._replicas(hop, besides=[other.node_id])
        span = f"layers [{accused.start}, {accused.end})"
        if not thirds:
            raise VerificationFailed(
                f"{accused.address} and {other.address}, the replicas of {span}, computed step {index} "
                "differently and no third replica can tell which one is honest; start another node for "
                "those layers, or generate without verify_fraction"
            )
        referee = self._rng.choice(thirds)
        try:
            session = await self._open(hop, referee)
            try:
                replay = [(sent.hidden, sent.positions) for sent in history[: index + 1] if sent.hidden is not None]
                decided = (await session.hidden_steps(replay, self._timeout))[-1]
            finally:
                await session.close()
        except SwarmError as exc:  # gone, full, or refusing: no verdict
            log.warning("the referee %s failed (%s): the dispute over %s stays open", referee.address, exc, span)
            return None
        with_ours = agree(ours, decided, self._exact(accused, referee))
        with_theirs = agree(theirs, decided, self._exact(other, referee))
        if with_ours == with_theirs:  # all three differ (or a liar elsewhere on the route): no majority
            log.warning("replicas of %s disagree three ways at step %d: nobody banned", span, index)
            return None
        liar = other if with_ours else accused
        self._swarm.bans.ban(liar.node_id, time.monotonic(), VERIFY_BAN_S)
        self._stats.banned.append(liar.node_id)
        log.warning("%s (%s) computed step %d of %s differently from two other replicas; banned for %.0f h",
                    liar.node_id, liar.address, index, span, VERIFY_BAN_S / 3600)  # fmt: skip
        return liar.node_id if liar is accused else None


def check_verification(config: ClientConfig) -> None:
    """Verification compares hidden states, which only a private session's client receives."""
    if config.verify_fraction and not config.private:
        raise InvalidRequest("verify_fraction needs a private session (private=True): only then does the "
                             "client see the hidden states it compares")  # fmt: skip
    if not 0.0 <= config.verify_fraction <= 1.0:
        raise InvalidRequest(f"verify_fraction must be in [0, 1], got {config.verify_fraction}")

