"""Speculative decoding: proposing drafts, and checking them against the target in one pass.

A pass feeds the target [last token, d1 .. dk] as one step and gets k + 1 rows of logits: row i
is the distribution of the token after d_i (row 0: after the last token). `accept` keeps the
leading drafts the target agrees with and adds the target's own next token, so a pass yields
between 1 and k + 1 tokens for about the price of one step on a memory-bound device.

Every draft source here is deterministic (a one-hot draft), which makes the acceptance rule
simple: the target's token at each position is drawn exactly as plain decoding draws it
(`sample(row, params, position)`: argmax, or Philox(seed, position)), and a draft is accepted
while it equals that token. For a one-hot draft d this accepts with probability p(d) and, on a
rejection, yields a token distributed as p with d removed and renormalised: the standard
speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023), coupled to the draws plain
decoding makes. So the output is the target's distribution exactly, and, on the same logits,
the very tokens plain decoding with that seed gives. Nothing here reads a clock: the window
follows counts only, so every runner of a session makes the same choices.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from swarm.errors import InvalidRequest, SwarmError
from swarm.generation import GenerationStats
from swarm.package import Manifest
from swarm.sampling import SamplingParams, sample

LOOKUP = "lookup"  # the `speculative=` value that asks for PromptLookup
MAX_DRAFTS = 32  # drafts one verify step may carry (a node refuses more)
MAX_DEPTH = 8  # verify passes a client keeps in flight at most (pipelined speculation)
MAX_PAUSE = 256  # plain tokens at most between probes, however often speculation failed


class Drafter(Protocol):
    def propose(self, context: Sequence[int], k: int) -> list[int]:
        """At most `k` tokens that may continue `context` (the whole sequence so far)."""
        ...


class PromptLookup:
    """Drafts by looking the context's last n tokens up earlier in it (no second model).

    For n from `max_ngram` down to `min_ngram`, the most recent earlier occurrence of the
    context's last n tokens proposes what followed it there. Strong where the output repeats its
    input: editing, extraction, code, a chat that quotes. Only the last `search` tokens are
    searched, so a call costs O(search * max_ngram) whatever the context's length (one vectorised
    comparison per n; 4096 tokens take tens of microseconds), and a long context's distant past,
    which rarely predicts the next tokens better than its recent part, costs nothing."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, search: int = 4096) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise InvalidRequest(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        if search <= max_ngram:
            raise InvalidRequest(f"search must be longer than max_ngram, got {search}")
        self.max_ngram, self.min_ngram, self.search = max_ngram, min_ngram, search

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        if k <= 0:
            return []
        tokens = np.asarray(context[-self.search :], dtype=np.int64)
        for n in range(min(self.max_ngram, tokens.size - 1), self.min_ngram - 1, -1):
            # windows starting at j < len - n: every earlier occurrence, the suffix itself excluded
            windows = sliding_window_view(tokens[:-1], n)
            matches = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
            if matches.size:
                start = int(matches[-1]) + n
                return [int(t) for t in tokens[start : start + k]]
        return []


class AdaptiveWindow:
    """How many drafts to ask for next (`k`), following the acceptance of the recent passes.

    A pass whose drafts were all accepted doubles k (up to `k_max`); a rejection after `a`
    accepted drafts sets k to a + 1 (at least `k_min`). Over the last `history` passes that
    proposed anything, an acceptance rate (accepted / proposed) under `min_rate` switches
    speculation off (k = 0) for `pause` passes: a verify pass costs a little more than a plain
    step (the extra positions' compute, locally; the wider hidden states, on a swarm), and
    rarely accepted drafts do not repay it. After the pause one probe pass at k_min decides
    alone: under `min_rate` and speculation pauses again, for twice as long (up to `MAX_PAUSE`),
    so text that lookup cannot predict costs a probe per ever longer plain run; at or above it,
    speculation resumes with a fresh history and the pause back at `pause`. Passes that proposed
    nothing (no lookup match) teach it nothing. Counts only, never time: every runner of a
    session makes the same choices."""

    def __init__(self, k_max: int = 8, k_min: int = 1, k_start: int = 2, history: int = 4,
                 min_rate: float = 0.3, pause: int = 16) -> None:  # fmt: skip
        if not 1 <= k_min <= k_start <= k_max:
            raise InvalidRequest(f"need 1 <= k_min <= k_start <= k_max, got {k_min}, {k_start}, {k_max}")
        if history < 1 or pause < 1 or not 0 <= min_rate <= 1:
            raise InvalidRequest("history and pause must be >= 1 and min_rate in [0, 1]")
        self.k_max, self.k_min, self.min_rate, self.pause = k_max, k_min, min_rate, pause
        self._k = k_start
        self._recent: deque[tuple[int, int]] = deque(maxlen=history)
        self._paused = 0  # passes left with speculation off
        self._pause_length = pause  # of the next pause: doubles after each probe that does not pay
        self._probing = False  # the next proposing pass is the probe after a pause

    @property
    def k(self) -> int:
        """Drafts to propose for the next pass; 0 = a plain step."""
        return 0 if self._paused else self._k

    @property
    def confident(self) -> bool:
        """Whether passes hold well enough to chain another on the one ahead (pipelined speculation):
        not while probing, nor at k_min, where the last pass kept none of its drafts."""
        return not self._probing and not self._paused and self._k > self.k_min

    @property
    def paused_for(self) -> int:
        """Plain passes left before speculation probes again (0: not paused)."""
        return self._paused

    def observe(self, proposed: int, accepted: int) -> None:
        """What the last pass did: `proposed` drafts, `accepted` of them (pipelined, k may have
        moved since it was sent)."""
        if not 0 <= accepted <= proposed:
            raise InvalidRequest(f"a pass cannot accept {accepted} of {proposed} drafts")
        if self._paused:
            self._paused -= 1
            if not self._paused:
                self._k, self._probing = self.k_min, True
            return
        if proposed == 0:
            return
        if self._probing:
            self._probing = False
            if accepted < self.min_rate * proposed:
                self._pause_length = min(2 * self._pause_length, MAX_PAUSE)
                self._paused = self._pause_length
                return
            self._pause_length = self.pause
        self._recent.append((proposed, accepted))
        self._k = min(2 * self._k, self.k_max) if accepted == proposed else max(accepted + 1, self.k_min)
        if len(self._recent) == self._recent.maxlen:
            offered = sum(p for p, _ in self._recent)
            if sum(a for _, a in self._recent) < self.min_rate * offered:
                self._paused = self._pause_length
                self._recent.clear()


def accept(logits: np.ndarray, drafts: Sequence[int], params: SamplingParams, position: int) -> tuple[int, int]:
    """(accepted drafts a, the next token) for target logits (k + 1, V) over [last, d1 .. dk].

    Row i is the distribution of the token at sequence position `position + i`. The target's token
    there is `sample(row i, params, position + i)`, exactly as a plain step draws it; drafts are
    accepted while they equal it, and the next token is the target's at row a (module docstring:
    for deterministic drafts this is the speculative-sampling rule, and keeps the distribution)."""
    if logits.ndim != 2 or logits.shape[0] != len(drafts) + 1:
        raise InvalidRequest(f"{len(drafts)} drafts need {len(drafts) + 1} rows of logits, got shape {logits.shape}")
    for i, draft in enumerate(drafts):
        token = sample(logits[i], params, position + i)
        if token != draft:
            return i, token
    return len(drafts), sample(logits[len(drafts)], params, position + len(drafts))


class DraftSession(Protocol):
    """A model's sequence with its own caches (swarm.local.LocalSession)."""

    @property
    def length(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    def truncate(self, length: int) -> None: ...

    def next_token(self, ids: Sequence[int], params: SamplingParams) -> int: ...


def check_same_tokenizer(draft: Manifest, target: Manifest) -> None:
    """A draft model must speak the target's token ids: the same tokenizer file, byte for byte."""
    if draft.tokenizer.sha256 != target.tokenizer.sha256:
        raise InvalidRequest(
            f"the draft model {draft.name} has another tokenizer than {target.name} (tokenizer sha256 "
            f"{draft.tokenizer.sha256[:12]} vs {target.tokenizer.sha256[:12]}); draft with a package of the "
            f"same family, or use speculative='{LOOKUP}'"
        )


class ModelDrafter:
    """Greedy proposals from a draft model (a smaller one with the same tokenizer), on its own caches.

    It remembers what its caches hold; each call keeps the part shared with `context`, rolls the
    rest back (its previous drafts the target rejected), feeds what is new, and decodes k tokens."""

    def __init__(self, session: DraftSession) -> None:
        self._session = session
        self._fed: list[int] = []  # the tokens the draft's caches hold, in order
        self._greedy = SamplingParams()

    def propose(self, context: Sequence[int], k: int) -> list[int]:
        k = min(k, self._session.capacity - len(context) + 1)  # the last draft is never fed
        if k <= 0 or not context:
            return []
        shared = 0
        for held, wanted in zip(self._fed, context, strict=False):
            if held != wanted:
                break
            shared += 1
        shared = min(shared, len(context) - 1)  # at least one token to feed: it gives the logits
        self._session.truncate(shared)
        drafts = [self._session.next_token(context[shared:], self._greedy)]
        while len(drafts) < k:
            drafts.append(self._session.next_token(drafts[-1:], self._greedy))
        self._fed = [*context, *drafts[:-1]]
        return drafts


Step = Callable[[Sequence[int], SamplingParams], Awaitable[int]]  # append ids, return the next token
# (last token, n, stop ids) -> the next n tokens, each fed back in (a swarm's first node loops them)
PlainRun = Callable[[int, int, SamplingParams, Sequence[int]], AsyncGenerator[int, None]]
# plain tokens after a pass with nothing to propose, before the drafter is asked again: each
# plain run is one trip to start on a swarm, so not too short (docs/ARCHITECTURE.md says what was measured)
STREAK = 8
Propose = Callable[[list[int], int], Awaitable[list[int]]]  # (context, k) -> at most k drafts


@dataclass
class Pass:
    """One verify step as sent: `ids` from `position` on, the last `len(drafts)` of them proposed.
    A chained pass (pipelined speculation) is drafts only and starts where the live pass ahead of it
    ends, its first draft a guess of the token that pass ends with. It is `live` while every pass
    ahead of it may still hold; a dead one's answer is read and dropped."""

    position: int
    ids: list[int]
    drafts: list[int]
    chained: bool = False
    live: bool = True


class PassesLost(SwarmError):
    """The passes in flight are gone (the route failed and was recovered): send again from the
    last token received."""


class Passes(Protocol):
    """Where verify passes go (the local runner, a swarm's route): sent in order, answered in order."""

    async def send(self, sent: Pass) -> None:
        """Send `sent` on (on a swarm: without waiting for the answers to the passes ahead)."""
        ...

    async def receive(self, sent: Pass) -> tuple[int, int]:
        """The answer to `sent`, the oldest pass not yet answered: (drafts accepted, the token after
        them); meaningless for a dead pass, which the target cancels unseen."""
        ...


async def speculative_tokens(
    step: Step, propose: Propose, passes: Passes, plain: PlainRun, ids: Sequence[int], count: int,
    params: SamplingParams, stop_ids: Sequence[int], window: AdaptiveWindow, stats: GenerationStats,
    draft_limit: int, depth: int = 1,
) -> AsyncGenerator[int, None]:  # fmt: skip
    """The token stream with speculation, however the target runs (the local runner, a swarm):
    after the prompt's step, each pass sends [last token, d1 .. dk] (k from `window`, at most
    `draft_limit`, never past the last token asked for) as one verify step and yields the
    accepted drafts and the target's next token. After a pass the target holds only the accepted
    tokens (the runner rolls the rest back). With nothing to propose (speculation paused, or no
    draft) the next tokens come from a `plain` run, the pause's length or `STREAK`: on a swarm the
    first node feeds those back itself, as plain decoding does, instead of one client trip each.

    `depth` > 1 pipelines: up to `depth` live passes in flight, each after the first chained on
    the one ahead (it assumes that one holds whole). An answer that breaks the assumption kills the
    passes behind it; their answers are read and dropped, and the next pass starts again from the
    last token received. Every runner makes the same choices (counts and the context only), so
    the same passes, and the same tokens."""
    if not 1 <= depth <= MAX_DEPTH:
        raise InvalidRequest(f"speculative depth must be 1 to {MAX_DEPTH} passes in flight, got {depth}")
    context = list(ids)
    pending = [await step(ids, params)]
    produced = 0
    flight: deque[Pass] = deque()
    while True:
        for token in pending:
            yield token
            produced += 1
            context.append(token)
            if token in stop_ids or produced == count:
                await _drain(passes, flight)  # the session may go on: leave nothing unread
                return
        pending = []
        try:
            while sum(p.live for p in flight) < (depth if window.confident else 1) and (sent := await _next_pass(
                    propose, context, flight, min(window.k, draft_limit), count - produced - 1)):  # fmt: skip
                await passes.send(sent)
                flight.append(sent)
            if not flight:
                n = min(window.paused_for or STREAK, count - produced)
                pending = [token async for token in plain(context[-1], n, params, stop_ids)]
                for _ in pending:
                    window.observe(0, 0)
                stats.passes += len(pending)
                continue
            answered = flight[0]
            accepted, token = await passes.receive(answered)
        except PassesLost:
            flight.clear()
            continue
        flight.popleft()
        if not answered.live:
            stats.passes_dropped += 1
            continue
        # a chained pass's first draft is the token the pass ahead ended with, received with it
        guess = int(answered.chained)
        stats.passes_chained += guess
        window.observe(len(answered.drafts) - guess, accepted - guess)
        stats.draft_proposed += len(answered.drafts) - guess
        stats.draft_accepted += accepted - guess
        stats.passes += 1
        pending = [*answered.drafts[guess:accepted], token]
        if accepted < len(answered.drafts) or (flight and flight[0].ids[0] != token):
            for behind in flight:
                behind.live = False


async def _next_pass(propose: Propose, context: list[int], flight: deque[Pass], k: int, room: int) -> Pass | None:
    """The next pass, of at most `k` drafts, or None (nothing to propose, or past the `room` left for
    drafts): on the last token received when no live pass is in flight, else chained on the last
    live one."""
    live = [p for p in flight if p.live]
    assumed = [token for p in live for token in p.drafts]  # what the live passes would add, held whole
    k = max(min(k, room - len(assumed)), 0)
    drafts = (await propose(context + assumed, k))[:k] if k > 0 else []
    if not drafts:
        return None
    if not live:
        return Pass(len(context) - 1, [context[-1], *drafts], drafts)
    ahead = live[-1]
    return Pass(ahead.position + len(ahead.ids), drafts, drafts, chained=True)


async def _drain(passes: Passes, flight: deque[Pass]) -> None:
    """Read the answers still due (passes past the end of the generation: dead or not, unused)."""
    while flight:
        unused = flight.popleft()
        unused.live = False  # its tokens are not the sequence's, whatever the target made of them
        await passes.receive(unused)
