"""Token sampling: greedy, temperature, top-k, top-p, seeded by (seed, position).

The randomness for the token at position p is a pure function of (seed, p), drawn from a
counter-based generator (Philox). Any node that samples position p of a session draws the
same number, so a replacement tail node continues the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swarm.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1 = all
    seed: int = 0  # with the position, fixes every random draw

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise InvalidRequest(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise InvalidRequest(f"seed must be in [0, 2^64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def uniform(seed: int, position: int) -> float:
    """A uniform draw in [0, 1) that depends only on (seed, position)."""
    generator = np.random.Generator(np.random.Philox(key=seed, counter=[position, 0, 0, 0]))
    return float(generator.random())


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution sampling draws from, after temperature, top-k and top-p (float64, sums to 1)."""
    wide = logits.astype(np.float64)
    # the largest logit goes to 0 before dividing, so a tiny temperature gives -inf elsewhere
    # (greedy in the limit) instead of inf - inf = NaN
    with np.errstate(over="ignore"):
        scaled = (wide - wide.max()) / params.temperature
    if 0 < params.top_k < scaled.size:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, params.top_p)) + 1  # smallest prefix reaching top_p
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample(logits: np.ndarray, params: SamplingParams, position: int) -> int:
    """The next token id for the sequence position `position` from one row of logits (V,)."""
    if params.greedy:
        return int(np.argmax(logits))
    probs = probabilities(logits, params)
    index = int(np.searchsorted(np.cumsum(probs), uniform(params.seed, position), side="right"))
    return min(index, probs.size - 1)
