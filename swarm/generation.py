"""The token loop shared by every way of running a model: local, or through a swarm.

A `TokenStream` is asked once for a generation's tokens: it appends the prompt (prefill), then
yields each sampled token, feeding it back in as the next input (decode) itself, however it
runs (in this process, or along a route whose first node closes the loop). `generate_ids` reads
that stream and keeps the timings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from swarm.errors import InvalidRequest
from swarm.sampling import SamplingParams


class TokenStream(Protocol):
    def tokens(
        self, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
    ) -> AsyncGenerator[int, None]:
        """Append `ids` to the sequence, then yield up to `count` sampled tokens, each fed back
        in as the next input; the stream ends after a token in `stop_ids`."""
        ...


Step = Callable[[Sequence[int], SamplingParams], Awaitable[int]]


async def stepped(
    step: Step, ids: Sequence[int], count: int, params: SamplingParams, stop_ids: Sequence[int] = ()
) -> AsyncGenerator[int, None]:
    """A token stream over `step` (append ids, return the sampled next token): each token is
    stepped back in by the caller's side, one step per token."""
    for _ in range(count):
        token = await step(ids, params)
        yield token
        if token in stop_ids:
            return
        ids = [token]


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
    # each step's compute on each hop of its route, ms, as the nodes timed it (StepResult.timings)
    hop_ms: list[list[float]] = field(default_factory=list)
    route: list[str] = field(default_factory=list)  # who ran which layers (the last route, after recoveries)
    recoveries: list[float] = field(default_factory=list)  # seconds each reroute + replay took
    context_note: str = ""  # what a chat left out to fit the context (swarm.conversation)
    # speculative decoding (swarm/speculative.py): drafts offered and kept, and the decode passes
    # (steps after the prompt's) that produced the tokens after the first
    draft_proposed: int = 0
    draft_accepted: int = 0
    passes: int = 0
    # pipelined (depth > 1): passes sent chained on the one ahead that held, and those dropped
    # because a pass ahead of them did not (their answers read and thrown away)
    passes_chained: int = 0
    passes_dropped: int = 0
    # verification of a private session (swarm/verification.py): steps replayed on another replica
    # and compared, the disagreements found, and the nodes banned for them
    verified: int = 0
    mismatches: int = 0
    banned: list[str] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """New tokens after the first per decode pass: 1 for plain decoding, up to k + 1 speculating."""
        return (self.generated_tokens - 1) / self.passes if self.passes else 0.0

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
        if self.passes:
            line += (f"; drafts accepted {self.draft_accepted}/{self.draft_proposed}, "
                     f"{self.tokens_per_pass:.2f} tokens per pass")  # fmt: skip
        if self.passes_chained or self.passes_dropped:
            line += f" ({self.passes_chained} chained on the pass ahead, {self.passes_dropped} dropped)"
        return line + (f"; {self.context_note}" if self.context_note else "")


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_on_eos: bool = True
    speculative: str | None = None  # draft source: "lookup" (prompt lookup) or a draft package's path; None = off

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
    stream: TokenStream,
    request: GenerationRequest,
    eos_ids: Sequence[int],
    stats: GenerationStats,
    started: float | None = None,
) -> AsyncIterator[int]:
    """Yield new token ids until max tokens or (if asked) an end-of-sequence token, which is yielded too.

    `started` (perf_counter) is when the request began, if before the stream was opened."""
    stats.prompt_tokens = len(request.prompt_ids)
    started = started or time.perf_counter()
    stop_ids = tuple(eos_ids) if request.stop_on_eos else ()
    tokens = stream.tokens(request.prompt_ids, request.max_tokens, request.sampling, stop_ids)
    try:
        token = await anext(tokens)
        first = time.perf_counter()
        stats.ttft_s = first - started
        for produced in range(1, request.max_tokens + 1):
            stats.generated_tokens = produced
            stats.decode_s = time.perf_counter() - first
            yield token
            if produced == request.max_tokens or token in stop_ids:
                return
            before = time.perf_counter()
            token = await anext(tokens)
            stats.step_s.append(time.perf_counter() - before)
    finally:
        await tokens.aclose()
