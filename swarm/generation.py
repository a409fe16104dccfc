"""The token loop shared by every way of running a model: local, or through a swarm.

A `TokenStepper` runs some ids through the whole model and samples the next token; the
loop feeds the prompt once (prefill) and then each new token (decode), and keeps timings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from swarm.errors import InvalidRequest
from swarm.sampling import SamplingParams


class TokenStepper(Protocol):
    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        """Append `ids` to the sequence and return the sampled next token."""
        ...


@dataclass
class GenerationStats:
    """How one generation went, timed in one place for every front end (`swarm-client generate`,
    chat's /stats, `serve`'s request lines, examples/storyteller.py, bench/): `generate_ids`, the
    token loop every way of running a model shares, stamps the times; nobody else times anything.

    Time to first token: from the request (before its route opens) to the first new token reaching
    the loop. Decode rate: the tokens after the first, over the seconds from the first to the last.
    Both are seen from the client: with the node loop the swarm runs ahead, so a client that reads
    late (a busy machine) finds tokens waiting, and its rate is how fast it took them."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0  # prompt submitted -> first token back
    decode_s: float = 0.0  # first token -> last token
    step_s: list[float] = field(default_factory=list)  # each decode step's latency
    route: list[str] = field(default_factory=list)  # who ran which layers (the last route, after recoveries)
    recoveries: list[float] = field(default_factory=list)  # seconds each reroute + replay took
    context_note: str = ""  # what a chat left out to fit the context (swarm.conversation)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def summary(self) -> str:
        line = (
            f"{self.prompt_tokens} prompt tokens, {self.generated_tokens} new; "
            f"time to first token {self.ttft_s * 1000:.0f} ms, decode {self.decode_tokens_per_s:.1f} tokens/s"
        )
        line += f"; route {' -> '.join(self.route)}" if self.route else ""
        return line + (f"; {self.context_note}" if self.context_note else "")


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_on_eos: bool = True

    def check(self, max_context: int) -> None:
        if not self.prompt_ids:
            raise InvalidRequest("the prompt is empty")
        if self.max_tokens < 1:
            raise InvalidRequest(f"max tokens must be at least 1, got {self.max_tokens}")
        if len(self.prompt_ids) + self.max_tokens > max_context:
            raise InvalidRequest(
                f"prompt of {len(self.prompt_ids)} tokens + {self.max_tokens} new tokens exceeds the "
                f"model's context of {max_context}; shorten the prompt or lower max tokens"
            )

    @property
    def total_tokens(self) -> int:
        return len(self.prompt_ids) + self.max_tokens


async def generate_ids(
    stepper: TokenStepper,
    request: GenerationRequest,
    eos_ids: Sequence[int],
    stats: GenerationStats,
    started: float | None = None,
) -> AsyncIterator[int]:
    """Yield new token ids until max tokens or (if asked) an end-of-sequence token, which is yielded too.

    `started` (perf_counter) is when the request began, if before the stepper was opened."""
    stats.prompt_tokens = len(request.prompt_ids)
    started = started or time.perf_counter()
    token = await stepper.step(request.prompt_ids, request.sampling)
    first = time.perf_counter()
    stats.ttft_s = first - started
    for produced in range(1, request.max_tokens + 1):
        stats.generated_tokens = produced
        stats.decode_s = time.perf_counter() - first
        yield token
        if produced == request.max_tokens or (request.stop_on_eos and token in eos_ids):
            return
        before = time.perf_counter()
        token = await stepper.step([token], request.sampling)
        stats.step_s.append(time.perf_counter() - before)
