"""Verification's rules on fake sessions: who gets banned when replicas disagree, and when nobody is."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from swarm._proto import swarm_pb2 as pb
from swarm.config import ClientConfig
from swarm.errors import CapacityExceeded, InvalidRequest, PeerUnavailable
from swarm.generation import GenerationRequest, GenerationStats
from swarm.recovery import Bans, Sent
from swarm.routing import PeerView
from swarm.tensors import to_wire
from swarm.verification import VERIFY_BAN_S, VerificationFailed, Verifier, agree, check_verification

FIRST, LAST = PeerView("first", "a:1", 0, 2, machine="x86_64"), PeerView("last", "a:9", 2, 5, machine="x86_64")
LIAR_AT = 3  # the liar's answers differ from this step on (the honest ones: `honest(step)`)


def honest(step: int) -> pb.Tensor:
    return to_wire(np.full((1, 1, 4), step, np.float32))


def lied(step: int, by: float = 1e-3) -> pb.Tensor:
    return to_wire(np.full((1, 1, 4), step + by, np.float32))


@dataclass
class FakeSession:
    """A shadow or referee session: answers each step as its replica of [0, 2) computes it."""

    lie: float  # 0: honest
    sent: list[int] = field(default_factory=list)
    closed: bool = False

    async def hidden_steps(self, steps: list[tuple[pb.Tensor, int]], timeout: float | None = None) -> list[pb.Tensor]:
        answers = []
        for _ in steps:
            step = len(self.sent)
            self.sent.append(step)
            answers.append(lied(step, self.lie) if self.lie and step >= LIAR_AT else honest(step))
        return answers

    async def close(self) -> None:
        self.closed = True


@dataclass
class FakeSwarm:
    peers: list[PeerView]
    liars: dict[str, float]  # node id -> what it adds to its answers from step LIAR_AT on
    bans: Bans = field(default_factory=Bans)
    opened: list[FakeSession] = field(default_factory=list)

    async def open_session(self, request: GenerationRequest, stats: GenerationStats,
                           route: list[PeerView] | None = None, timeout_s: float | None = None) -> FakeSession:
        assert route is not None and route[1] == LAST  # only the checked span's node is swapped
        session = FakeSession(self.liars.get(route[0].node_id, 0.0))
        self.opened.append(session)
        return session


def history(steps: int, route_lies: float = 0.0) -> list[Sent]:
    """The steps the route answered: honestly, or (`route_lies`) off by that from step LIAR_AT on."""
    return [Sent([], hidden=honest(i), answer=lied(i, route_lies) if route_lies and i >= LIAR_AT else honest(i))
            for i in range(steps)]  # fmt: skip


def run(swarm: FakeSwarm, sent: list[Sent], fraction: float = 1.0,
        seed: int = 3) -> tuple[str | None, GenerationStats, Verifier]:  # fmt: skip
    stats = GenerationStats()
    config = ClientConfig(private=True, verify_fraction=fraction, verify_seed=seed)
    verifier = Verifier(swarm, config, GenerationRequest((1,)), stats)  # type: ignore[arg-type]

    async def check() -> str | None:
        found = None
        for step in range(1, len(sent) + 1):
            found = found or await verifier.check(sent[:step], [FIRST, LAST])
        await verifier.close()
        return found

    return asyncio.run(check()), stats, verifier


def replicas(*names: str) -> list[PeerView]:
    return [FIRST, LAST, *(PeerView(n, f"b:{i}", 0, 2, machine="x86_64") for i, n in enumerate(names))]


def test_the_routes_liar_is_banned_and_named_for_recovery() -> None:
    swarm = FakeSwarm(replicas("r1", "r2"), liars={"first": 1e-3})
    found, stats, _ = run(swarm, history(8, route_lies=1e-3))
    assert found == "first"
    assert stats.banned == ["first"] and stats.mismatches == 1
    assert swarm.bans.until["first"] - time.monotonic() > VERIFY_BAN_S - 60
    assert all(s.closed for s in swarm.opened)


def test_a_lying_shadow_is_banned_and_the_route_goes_on() -> None:
    swarm = FakeSwarm(replicas("r1"), liars={"r1": 1e-3})
    swarm.peers.append(PeerView("r2", "b:9", 0, 2, machine="x86_64"))
    for seed in range(8):  # whichever replica the seed makes the shadow first
        found, stats, _ = run(swarm, history(8, route_lies=0.0), seed=seed)
        assert found is None  # the route's node is never accused
        assert stats.banned == (["r1"] if stats.mismatches else [])
        swarm.bans = Bans()
    assert swarm.opened and any(s.lie for s in swarm.opened)  # the liar did serve as a shadow


def test_all_honest_raise_nothing() -> None:
    swarm = FakeSwarm(replicas("r1", "r2"), liars={})
    found, stats, _ = run(swarm, history(50, route_lies=0.0))
    assert found is None and stats.banned == [] and stats.mismatches == 0
    assert stats.verified == 50  # every step compared once


def test_two_replicas_cannot_tell_who_lied() -> None:
    swarm = FakeSwarm(replicas("r1"), liars={"first": 1e-3})
    with pytest.raises(VerificationFailed, match="no third replica"):
        run(swarm, history(8, route_lies=1e-3))


def test_three_way_disagreement_bans_nobody() -> None:
    swarm = FakeSwarm(replicas("r1", "r2"), liars={"r1": 2e-3})  # the route lies one way, r1 another
    found, stats, _ = run(swarm, history(8, route_lies=1e-3))
    assert found is None and stats.banned == [] and stats.mismatches >= 1


def test_a_fraction_checks_that_share_of_steps_and_catches_up_the_rest() -> None:
    swarm = FakeSwarm(replicas("r1", "r2"), liars={})
    sent = history(400, route_lies=0.0)
    _, stats, _ = run(swarm, sent, fraction=0.05)
    shadow = swarm.opened[0]
    assert 0 < stats.verified <= 400 and stats.verified == sum(len(s.sent) for s in swarm.opened)
    assert len(shadow.sent) >= 300  # the last check caught up every step before it


def test_comparison_is_exact_on_one_machine_and_tolerant_across() -> None:
    a = to_wire(np.ones((1, 1, 4), np.float32))
    b = to_wire(np.ones((1, 1, 4), np.float32) + 1e-6)
    assert agree(a, a, exact=True) and not agree(a, b, exact=True)
    assert agree(a, b, exact=False)
    assert not agree(a, to_wire(np.ones((1, 1, 4), np.float32) * 1.01), exact=False)
    assert not agree(a, to_wire(np.ones((1, 2, 4), np.float32)), exact=False)


def test_verification_needs_a_private_session() -> None:
    with pytest.raises(InvalidRequest, match="private"):
        check_verification(ClientConfig(verify_fraction=0.05))
    with pytest.raises(InvalidRequest, match=r"\[0, 1\]"):
        check_verification(ClientConfig(private=True, verify_fraction=2.0))


@pytest.mark.parametrize("error", [PeerUnavailable("gone"), CapacityExceeded("full")])
def test_a_failing_shadow_is_dropped_not_fatal(error: Exception) -> None:
    class Broken(FakeSwarm):
        async def open_session(self, *args: object, **kwargs: object) -> FakeSession:
            raise error

    swarm = Broken(replicas("r1"), liars={})
    found, stats, _ = run(swarm, history(5, route_lies=0.0))
    assert found is None and stats.verified == 0
