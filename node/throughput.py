"""How fast this node runs its span: measured once at start, announced to the swarm."""

from __future__ import annotations

import time

import numpy as np

from node.span import SpanRuntime
from swarm.sampling import SamplingParams

PROBE_STEPS = 3


def measure_steps_per_s(span: SpanRuntime) -> float:
    """Single-token decode steps per second through the whole span (after one warm-up step)."""
    caches = span.new_caches(PROBE_STEPS + 2)
    hidden = np.zeros((1, 1, span.arch.hidden_size), np.float32)
    greedy = SamplingParams()
    span.forward(hidden, caches, greedy, want_logits=False)  # warm-up
    started = time.perf_counter()
    for _ in range(PROBE_STEPS):
        span.forward(hidden, caches, greedy, want_logits=False)
    return PROBE_STEPS / (time.perf_counter() - started)
