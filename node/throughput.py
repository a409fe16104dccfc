"""How fast this node runs its span: measured once at start, announced to the swarm."""

from __future__ import annotations

import time

import numpy as np

from node.span import SpanRuntime
from swarm.sampling import SamplingParams

PROBE_STEPS = 3
PROBE_PREFILL_TOKENS = 64  # one prompt chunk of this many tokens (or the context, if shorter)


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
