"""Engines measured by taking turns in one process: what drift on a shared machine leaves alone.

Memory bandwidth here drifts by tens of percent between processes minutes apart; turns taken
seconds apart in one process see the same machine, so the per-round ratio between two engines
holds still where their separate tokens/s do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from swarm.local import LocalModel
from swarm.sampling import SamplingParams

PROMPT = list(range(3, 19))
NEW_TOKENS = 24

K = TypeVar("K", bound=Hashable)


def local_decode(model: LocalModel) -> float:
    """Greedy decode tokens/s of our local runner over NEW_TOKENS after a short prompt."""
    session = model.session(len(PROMPT) + NEW_TOKENS + 1)
    greedy = SamplingParams()
    token = session.next_token(PROMPT, greedy)
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        token = session.next_token([token], greedy)
    return NEW_TOKENS / (time.perf_counter() - start)


def take_turns(engines: dict[K, Callable[[], float]], rounds: int, pause_s: float = 0.0) -> dict[K, list[float]]:
    """Each engine's speed per round; the order reverses every round, after one warm-up each."""
    speeds: dict[K, list[float]] = {name: [] for name in engines}
    order = list(engines)
    for decode in engines.values():
        decode()  # warm-up: page in every weight
    for _ in range(rounds):
        for name in order:
            time.sleep(pause_s)
            speeds[name].append(engines[name]())
        order.reverse()
    return speeds


def round_ratios(ours: list[float], base: list[float]) -> list[float]:
    return [a / b for a, b in zip(ours, base, strict=True)]
