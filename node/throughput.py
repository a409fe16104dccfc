"""How fast this node runs its span: measured once at start, announced to the swarm."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from swarm.sampling import SamplingParams
from swarm.span import SpanRuntime

PROBE_STEPS = 3
PROBE_PREFILL_TOKENS = 64  # one prompt chunk of this many tokens (or the context, if shorter)


@dataclass(frozen=True)
class Capacity:
    """What a node offers the swarm: its speed measured at start, times the share it offers (a
    throttled phone offers less, so routing and assignment send it less). The one value both
    `Info` and the mDNS record announce."""

    measured_steps_per_s: float = 0.0  # decode steps per second through the span
    measured_prefill_tokens_per_s: float = 0.0  # prompt tokens per second through the span
    scale: float = 1.0  # the share offered, 0 < scale <= 1

    @property
    def steps_per_s(self) -> float:
        return self.measured_steps_per_s * self.scale

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.measured_prefill_tokens_per_s * self.scale

    def scaled(self, scale: float) -> Capacity:
        return replace(self, scale=min(max(scale, 0.01), 1.0))


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


def measure_prefill_tokens_per_s(span: SpanRuntime, max_context: int) -> float:
    """Prompt tokens per second through the whole span, for one chunk (after a warm-up chunk)."""
    tokens = max(1, min(PROBE_PREFILL_TOKENS, max_context // 2))
    hidden = np.zeros((1, tokens, span.arch.hidden_size), np.float32)
    greedy = SamplingParams()
    span.forward(hidden, span.new_caches(tokens), greedy, want_logits=False)  # warm-up
    caches = span.new_caches(tokens)
    started = time.perf_counter()
    span.forward(hidden, caches, greedy, want_logits=False)
    return tokens / (time.perf_counter() - started)
