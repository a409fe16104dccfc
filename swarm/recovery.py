"""Keeping a generation alive when nodes fail: detect, ban, reroute, replay.

The client keeps every step it sent (the prompt chunk, then each token). When a hop fails or
stalls past its deadline, the node to blame is banned for a while, a new route is planned
around it, and the new route's nodes rebuild their KV caches by replaying those steps in the
original chunking. The same graphs see the same inputs in the same order, so with greedy
sampling the generation continues exactly as a fault-free run, and seeded sampling draws the
same numbers because each draw depends only on (seed, position). That holds on a replacement of
the same machine (ISA): another ISA's kernels round differently, so the new route prefers
replicas on the machines that computed each layer first (docs/ARCHITECTURE.md, Fault recovery).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol, TypeVar

from swarm._proto import swarm_pb2 as pb
from swarm.config import ClientConfig
from swarm.errors import NoRouteError, PeerUnavailable, SessionExpired, StaleRoute, SwarmError
from swarm.generation import GenerationRequest, GenerationStats
from swarm.remote import RemoteSession, StepTimeout
from swarm.routing import PeerView, layer_machines
from swarm.sampling import SamplingParams
from swarm.speculative import AdaptiveWindow, Drafter, Pass, PassesLost, speculative_tokens

log = logging.getLogger("swarm.recovery")
RECOVERABLE = (PeerUnavailable, SessionExpired, StepTimeout)
T = TypeVar("T")


@dataclass
class Bans:
    """Nodes to route around, each for a time that doubles with every strike (times passed in)."""

    base_s: float = 2.0
    max_s: float = 60.0
    until: dict[str, float] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)

    def ban(self, node_id: str, now: float, length_s: float | None = None) -> float:
        """Ban `node_id` for the next strike's time, or `length_s` (a verification's long ban); a
        shorter ban never cuts a longer one short. Returns how long it is banned from `now`."""
        self.strikes[node_id] = self.strikes.get(node_id, 0) + 1
        length = length_s if length_s is not None else min(self.base_s * 2 ** (self.strikes[node_id] - 1), self.max_s)
        self.until[node_id] = max(self.until.get(node_id, now), now + length)
        return self.until[node_id] - now

    def banned(self, now: float) -> set[str]:
        return {node for node, until in self.until.items() if until > now}


@dataclass
class Deadlines:
    """Per-step deadlines that follow measured step times: generous until a step of that kind
    (one token, or a chunk) was measured, then a multiple of the typical time, never below
    `floor_s`. Decode steps and prompt chunks are measured apart: a prompt's time per token says
    little about a single token's, which pays for reading every weight on its own."""

    floor_s: float = 2.0
    first_s: float = 60.0  # before anything of the kind was measured (loading, a long prefill)
    multiple: float = 8.0
    decode_s: list[float] = field(default_factory=list)  # recent single-token step times
    chunk_per_token_s: list[float] = field(default_factory=list)  # recent multi-token chunks, per token

    def observe(self, seconds: float, tokens: int) -> None:
        if tokens == 1:
            self.decode_s = [*self.decode_s[-31:], seconds]
        else:
            self.chunk_per_token_s = [*self.chunk_per_token_s[-7:], seconds / tokens]

    def for_step(self, tokens: int) -> float:
        history = self.decode_s if tokens == 1 else self.chunk_per_token_s
        if not history:
            return self.first_s
        typical = statistics.median(history) * (1 if tokens == 1 else tokens)
        return max(self.floor_s, self.multiple * typical)


@dataclass
class Sent:
    """One step as it was sent: its ids and, for a verify step, its drafts and how many were kept."""

    ids: list[int]
    drafts: list[int] = field(default_factory=list)
    accepted: int = 0
    chained: bool = False  # a chained verify step (pipelined speculation): drafts only
    hidden: pb.Tensor | None = None  # a private session's step: the hidden states sent, byte for byte
    answer: pb.Tensor | None = None  # and what the route answered (after a recovery: the new route's replay)

    @property
    def positions(self) -> int:
        return int(self.hidden.shape[1]) if self.hidden is not None else len(self.ids)


class ReplayDiverged(SwarmError):
    """A replay did not reproduce the original steps' answers: the generation cannot go on exactly."""


class Routes(Protocol):
    """What recovery needs of a swarm (the SDK's `AsyncSwarm` is one): the best route around the
    banned nodes, a session along a route, a fresh look at the swarm, and a health check."""

    bans: Bans

    def route(self, machines: Sequence[str] = ()) -> list[PeerView]: ...

    async def open_session(
        self, request: GenerationRequest, stats: GenerationStats, route: list[PeerView] | None = None,
        timeout_s: float | None = None,
    ) -> RemoteSession: ...

    async def refresh(self, rediscover: bool = True) -> None: ...

    async def unresponsive(self, peers: Sequence[PeerView], timeout_s: float = 1.0) -> set[str]: ...


class RecoveringSession:
    """A token stream over the swarm that survives node failures."""

    def __init__(self, swarm: Routes, config: ClientConfig, request: GenerationRequest,
                 stats: GenerationStats) -> None:  # fmt: skip
        self._swarm, self._config, self._request, self._stats = swarm, config, request, stats
        self._history: list[Sent] = []  # every step sent and answered, as sent
        self._pass_failures = 0  # recoveries in a row while verify passes were in flight
        self._session: RemoteSession | None = None
        self._machines: list[str] = []  # the machine of each layer on the first route: replays go there
        self._deadlines = Deadlines(floor_s=config.min_step_deadline_s, first_s=config.step_timeout_s)
        # a private session's verification (swarm/verification.py): told the history and the route
        # after each step, it returns the node of the route it caught computing differently, if any
        self.audit: Callable[[Sequence[Sent], list[PeerView]], Awaitable[str | None]] | None = None

    async def open(self) -> None:
        self._session = await self._reopen(record_recovery=True)
        self._machines = layer_machines(self._session.route)

    async def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        """The remote session's token stream (the first node following on by itself unless
        `ClientConfig.node_loop` is off); when it fails, a new route replays the history and the
        stream goes on from the last token received."""
        pending, remaining, attempts = list(ids), count, 0
        while remaining > 0:
            assert self._session is not None
            stream = self._session.tokens(pending, remaining, params, stop_ids, follow=self._config.node_loop,
                                          timeout_for=self._deadlines.for_step)  # fmt: skip
            try:
                while remaining > 0:
                    started = time.perf_counter()
                    try:
                        token = await anext(stream)
                    except StopAsyncIteration:  # it ended at a stop id
                        return
                    except RECOVERABLE as exc:
                        attempts += 1
                        if attempts > self._config.max_recoveries:
                            raise
                        await self._recover(exc)
                        break  # a new stream, on the new route, from `pending`
                    self._deadlines.observe(time.perf_counter() - started, len(pending))
                    self._history.append(Sent(pending))
                    pending, remaining, attempts = [token], remaining - 1, 0
                    yield token
                    if token in stop_ids:
                        return
            finally:
                await stream.aclose()

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        """One plain step (the client feeds the token back), recovered like the stream's."""
        sent = Sent(list(ids))
        return (await self._recovering(sent, lambda s: s.step(sent.ids, params, self._deadlines.for_step(len(ids)))))

    def speculative_tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int], drafter: Drafter,
        stats: GenerationStats, draft_limit: int, depth: int = 1,
    ) -> AsyncGenerator[int, None]:  # fmt: skip
        """The token stream with speculation (swarm/speculative.py): the client proposes, each pass
        is one verify step through the route (at most `draft_limit` drafts, up to `depth` live ones
        in flight), and every step recovers as the plain stream's do."""

        async def propose(context: list[int], k: int) -> list[int]:
            return await asyncio.to_thread(drafter.propose, context, k)  # a draft model computes: off the loop

        def plain(last: int, n: int, params: SamplingParams, stop_ids: Sequence[int]) -> AsyncGenerator[int, None]:
            return self.tokens([last], n, params, stop_ids)  # the first node loops them, as plain decoding

        return speculative_tokens(self.step, propose, _RecoveringPasses(self), plain, ids, count, params, stop_ids,
                                  AdaptiveWindow(), stats, draft_limit, depth)  # fmt: skip

    async def hidden_step(self, hidden: pb.Tensor, positions: int) -> pb.Tensor:
        """One step of a private session (swarm/private.py), recovered like any step: a replay
        sends the very bytes the original sent."""
        sent = Sent([], hidden=hidden)
        timeout = self._deadlines.for_step(positions)
        sent.answer = await self._recovering(sent, lambda s: s.hidden_step(hidden, positions, timeout))
        if self.audit is not None and self._session is not None:
            liar = await self.audit(self._history, self._session.route)
            if liar is not None:  # reroute around it: the replay's answers replace the ones it spoiled
                error = PeerUnavailable(f"{liar} computed differently from the other replicas of its layers")
                error.node_id = liar  # type: ignore[attr-defined]
                await self._recover(error)
        return sent.answer

    async def _recovering(self, sent: Sent, send: Callable[[RemoteSession], Awaitable[T]]) -> T:
        attempts = 0
        while True:
            assert self._session is not None
            started = time.perf_counter()
            try:
                result = await send(self._session)
            except RECOVERABLE as exc:
                attempts += 1
                if attempts > self._config.max_recoveries:
                    raise
                await self._recover(exc)
                continue
            self._deadlines.observe(time.perf_counter() - started, sent.positions)
            self._history.append(sent)
            return result

    async def send_pass(self, sent: Pass) -> None:
        """Send a verify pass on without waiting (`speculative_tokens` with depth); if the route
        fails, recover it and raise PassesLost: what was in flight is sent again."""
        assert self._session is not None
        try:
            await self._session.send_verify(sent)
        except RECOVERABLE as exc:
            await self._recover_passes(exc)

    async def receive_pass(self, sent: Pass) -> tuple[int, int]:
        """The answer to the oldest pass sent; a live one joins the history (a replay repeats it)."""
        assert self._session is not None
        started = time.perf_counter()
        try:
            accepted, token = await self._session.receive_verify(sent, self._deadlines.for_step(len(sent.ids)))
        except RECOVERABLE as exc:
            await self._recover_passes(exc)
        self._pass_failures = 0
        if sent.live:
            self._deadlines.observe(time.perf_counter() - started, len(sent.ids))
            self._history.append(Sent(sent.ids, sent.drafts, accepted, chained=sent.chained))
        return accepted, token

    async def _recover_passes(self, error: SwarmError) -> NoReturn:
        self._pass_failures += 1
        if self._pass_failures > self._config.max_recoveries:
            raise error
        await self._recover(error)
        raise PassesLost("the route was recovered; the passes in flight are sent again") from error

    async def _replay(self, session: RemoteSession, sent: Sent) -> None:
        started = time.perf_counter()
        timeout = self._deadlines.for_step(sent.positions)
        if sent.hidden is not None:
            sent.answer = await session.hidden_step(sent.hidden, sent.positions, timeout)
        elif not sent.drafts:
            await session.step(sent.ids, self._request.sampling, timeout=timeout)
        else:
            accepted, _ = await session.verify(sent.ids, sent.drafts, self._request.sampling, timeout, sent.chained)
            if accepted != sent.accepted:  # another floating-point path (another ISA): not the same sequence
                raise ReplayDiverged(f"the replayed verify step accepted {accepted} drafts, the original "
                                     f"{sent.accepted}; the new route computes differently")  # fmt: skip
        self._deadlines.observe(time.perf_counter() - started, sent.positions)

    async def _recover(self, error: SwarmError) -> None:
        started = time.perf_counter()
        failed = self._session
        assert failed is not None
        if isinstance(error, StaleRoute):  # our view of the swarm is old: nobody to blame
            log.info("route is stale (%s); refreshing", error)
        else:
            culprit = await self._culprit(error, failed.route)
            length = self._swarm.bans.ban(culprit, time.monotonic())
            log.warning("route failed at %s (%s); banned for %.0fs, rerouting", culprit, error, length)
        await failed.close()
        self._session = None
        session = await self._reopen()
        for sent in self._history:  # replay in the original chunking: same graphs, same numbers
            await self._replay(session, sent)
        self._session = session
        self._stats.recoveries.append(time.perf_counter() - started)

    async def _culprit(self, error: SwarmError, route: Sequence[PeerView]) -> str:
        named = getattr(error, "node_id", None)
        if named:
            return str(named)
        if isinstance(error, StepTimeout):  # a stall: the hop that does not answer a health check
            silent = await self._swarm.unresponsive(route)
            for peer in route:
                if peer.node_id in silent:
                    return peer.node_id
        return route[0].node_id

    async def _reopen(self, record_recovery: bool = False) -> RemoteSession:
        """A session over a route without banned nodes, waiting (bounded) for the swarm to cover
        every layer again; a route that fails to open gets its culprit banned and is replaced."""
        deadline = time.monotonic() + self._config.recovery_wait_s
        failed_at: float | None = None
        while True:
            try:
                if failed_at is not None:
                    await self._swarm.refresh(rediscover=False)
                route = self._swarm.route(self._machines)
                session = await self._swarm.open_session(
                    self._request, self._stats, route, self._config.open_deadline_s
                )
            except NoRouteError:
                if time.monotonic() >= deadline:
                    raise
            except RECOVERABLE as exc:
                if time.monotonic() >= deadline:
                    raise
                if not isinstance(exc, StaleRoute):
                    self._swarm.bans.ban(await self._culprit(exc, route), time.monotonic())
            else:
                if record_recovery and failed_at is not None:
                    self._stats.recoveries.append(time.perf_counter() - failed_at)
                return session
            failed_at = failed_at or time.perf_counter()
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _RecoveringPasses:
    """A recovering session as the place verify passes go (swarm/speculative.py: Passes)."""

    def __init__(self, session: RecoveringSession) -> None:
        self._session = session

    async def send(self, sent: Pass) -> None:
        await self._session.send_pass(sent)

    async def receive(self, sent: Pass) -> tuple[int, int]:
        return await self._session.receive_pass(sent)
