"""The pure rules of recovery: bans with backoff, deadlines that follow measured step times."""

from __future__ import annotations

from swarm.recovery import Bans, Deadlines


def test_bans_double_and_expire() -> None:
    bans = Bans(base_s=2.0, max_s=10.0)
    assert bans.ban("a", now=0.0) == 2.0
    assert bans.banned(1.9) == {"a"} and bans.banned(2.0) == set()
    assert bans.ban("a", now=5.0) == 4.0
    assert bans.ban("a", now=5.0) == 8.0
    assert bans.ban("a", now=5.0) == 10.0  # capped
    assert bans.banned(14.9) == {"a"} and bans.banned(15.0) == set()


def test_deadlines_are_generous_until_measured() -> None:
    deadlines = Deadlines(floor_s=1.0, first_s=60.0, multiple=8.0)
    assert deadlines.for_step(1) == 60.0 and deadlines.for_step(64) == 60.0
    deadlines.observe(0.64, 64)  # a prompt: 10 ms per token
    assert deadlines.for_step(1) == 60.0  # says nothing about a lone token
    assert deadlines.for_step(32) == 8.0 * 0.32
    for seconds in (0.5, 0.7, 0.6):
        deadlines.observe(seconds, 1)
    assert deadlines.for_step(1) == 8.0 * 0.6


def test_deadlines_never_go_below_the_floor() -> None:
    deadlines = Deadlines(floor_s=2.0)
    deadlines.observe(0.001, 1)
    assert deadlines.for_step(1) == 2.0
