"""Speculative decoding's pure parts (swarm/speculative.py): drafts, the window, the acceptance rule, and
the pass loop (pipelined or not) against a target that judges passes as a swarm's last node does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import numpy as np
import pytest

from swarm.errors import InvalidRequest
from swarm.generation import GenerationStats
from swarm.sampling import SamplingParams, probabilities, sample
from swarm.speculative import MAX_PAUSE, AdaptiveWindow, Pass, PassesLost, PromptLookup, accept, speculative_tokens


@pytest.mark.parametrize(
    ("context", "k", "expected"),
    [
        ([1, 2, 3, 4, 1, 2, 3], 3, [4, 1, 2]),  # the 3-gram [1, 2, 3] seen before: what followed it
        ([1, 2, 3, 4, 1, 2, 3], 2, [4, 1]),  # at most k
        ([5, 6, 7, 5, 6, 8, 5, 6], 2, [8, 5]),  # [5, 6] twice before: the most recent occurrence
        ([1, 2, 9, 3, 2, 7, 1, 2], 3, [9, 3, 2]),  # the longest suffix wins over a more recent [2]
        ([7, 7, 7, 7], 4, [7]),  # the continuation ends where the context does
        ([1, 2, 3], 3, []),  # nothing seen before
        ([5], 3, []),
        ([1, 2, 3, 1], 0, []),
    ],
)  # fmt: skip
def test_prompt_lookup_proposes_what_followed_the_suffix(context: list[int], k: int, expected: list[int]) -> None:
    assert PromptLookup().propose(context, k) == expected


def test_prompt_lookup_bounds() -> None:
    assert PromptLookup().propose([4, 1, 5, 1], 3) == [5, 1]
    assert PromptLookup(min_ngram=2).propose([4, 1, 5, 1], 3) == []  # a 1-gram match is not enough
    far = [1, 2, 3, 9, 9, 9, 1, 2]
    assert PromptLookup().propose(far, 2) == [3, 9]
    assert PromptLookup(search=4).propose(far, 2) == []  # the earlier [1, 2] lies outside the search
    with pytest.raises(InvalidRequest):
        PromptLookup(max_ngram=1, min_ngram=2)


def ks(window: AdaptiveWindow, passes: list[tuple[int, int]]) -> list[int]:
    """k before each pass, and after the last."""
    seen = [window.k]
    for proposed, accepted in passes:
        window.observe(proposed, accepted)
        seen.append(window.k)
    return seen


def test_window_grows_on_full_acceptance_and_follows_rejections() -> None:
    passes = [(2, 2), (4, 4), (8, 8), (8, 3), (4, 0), (1, 1), (0, 0), (2, 1)]
    assert ks(AdaptiveWindow(), passes) == [2, 4, 8, 8, 4, 1, 2, 2, 2]


def test_window_switches_off_when_drafts_do_not_pay_and_probes_again() -> None:
    window = AdaptiveWindow(pause=3)
    assert ks(window, [(2, 0), (1, 0), (1, 0), (1, 0)]) == [2, 1, 1, 1, 0]  # 0 of 5 accepted over 4 passes
    assert ks(window, [(0, 0)] * 3) == [0, 0, 0, 1]  # the pause, then a probe at k_min
    assert ks(window, [(1, 1), (2, 2), (4, 0), (1, 0)]) == [1, 2, 4, 1, 1]  # a fresh history: 3 of 8 pays
    assert ks(window, [(1, 0)]) == [1, 0]  # the last 4: 2 of 8 does not
    assert window.paused_for == 3  # the probe paid, so the pause is back at its length


def test_passes_are_chained_only_while_drafts_are_being_kept() -> None:
    window = AdaptiveWindow()
    assert window.confident  # k starts at 2
    ks(window, [(2, 0)])  # kept none: k = 1
    assert not window.confident
    ks(window, [(1, 1)])  # kept it: k = 2
    assert window.confident
    ks(window, [(2, 1)])  # kept one of two: k = 2, still confident
    assert window.confident


def test_a_probe_that_does_not_pay_pauses_again_for_twice_as_long() -> None:
    window = AdaptiveWindow(pause=2)
    ks(window, [(1, 0)] * 4)  # paused for 2
    lengths = []
    for _ in range(9):  # each probe fails: 2, 4, 8 ... up to MAX_PAUSE plain tokens before the next
        lengths.append(window.paused_for)
        ks(window, [(0, 0)] * window.paused_for)
        assert window.k == 1 and not window.confident  # the probe (pipelined: nothing is chained on it)
        ks(window, [(1, 0)])
    assert lengths == [2, 4, 8, 16, 32, 64, 128, 256, 256] and MAX_PAUSE == 256
    ks(window, [(0, 0)] * window.paused_for + [(1, 1)])  # a probe that pays: speculation is back
    assert window.k == 2 and not window.paused_for
    ks(window, [(2, 0), (1, 0), (1, 0)])  # with the probe's pass: 1 of 5 over the last 4
    assert window.paused_for == 2  # and the next pause is the short one again


def test_window_refuses_impossible_passes_and_takes_passes_sent_at_an_older_k() -> None:
    with pytest.raises(InvalidRequest):
        AdaptiveWindow().observe(1, 2)
    with pytest.raises(InvalidRequest):
        AdaptiveWindow().observe(-1, 0)
    window = AdaptiveWindow()  # pipelined: two passes of 2 went out at k = 2; the first's answer set k to 1
    assert ks(window, [(2, 0), (2, 1)]) == [2, 1, 2]
    with pytest.raises(InvalidRequest):
        AdaptiveWindow(k_max=2, k_start=4)


def one_hot_rows(argmaxes: list[int], vocab: int = 12) -> np.ndarray:
    rows = np.zeros((len(argmaxes), vocab), np.float32)
    rows[np.arange(len(argmaxes)), argmaxes] = 5.0
    return rows


@pytest.mark.parametrize(
    ("drafts", "expected"),
    [([5, 7], (2, 9)), ([5, 8], (1, 7)), ([4, 7], (0, 5)), ([5, 7, 9, 9], None)],
)  # fmt: skip
def test_greedy_accepts_the_leading_drafts_equal_to_the_argmax(drafts: list[int], expected: tuple[int, int]) -> None:
    logits = one_hot_rows([5, 7, 9])
    if expected is None:
        with pytest.raises(InvalidRequest):
            accept(logits, drafts, SamplingParams(), 0)
    else:
        assert accept(logits, drafts, SamplingParams(), position=3) == expected
    assert accept(logits[:1], [], SamplingParams(), 3) == (0, 5)  # no drafts: a plain step


ROWS = np.log(np.array([[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]))
CHI2_3DF_999 = 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampled_acceptance_keeps_the_target_distribution() -> None:
    """Drafts [0, 1] against rows p0, p1: over 20,000 seeds the first token is distributed as p0
    (d1 = 0 accepted with probability p0[0]), the second, given d1 accepted, as p1; a rule that
    accepted drafts more often would put too much mass on them. The seeds are fixed: no flake."""
    firsts, seconds, accepted = np.zeros(4), np.zeros(4), 0
    for seed in range(20_000):
        params = SamplingParams(temperature=1.0, seed=seed)
        a, token = accept(ROWS, [0, 1], params, position=40)
        firsts[0 if a else token] += 1
        if a:
            seconds[1 if a == 2 else token] += 1
        accepted += a > 0
    p0, p1 = (probabilities(row, SamplingParams(temperature=1.0)) for row in ROWS[:2])
    assert chi2(firsts, p0) < CHI2_3DF_999
    assert chi2(seconds, p1) < CHI2_3DF_999
    assert abs(accepted / 20_000 - 0.5) < 0.02


def test_sampled_acceptance_is_plain_sampling_of_each_row() -> None:
    """The token at each position is the one plain decoding draws there with the same seed: a
    seeded speculative run reproduces a seeded plain run, whatever the drafts."""
    params = SamplingParams(temperature=0.9, top_k=3, seed=11)
    for position in range(200):
        plain = [sample(row, params, position + i) for i, row in enumerate(ROWS)]
        for drafts in ([0, 1], plain[:2], [plain[0], 3]):
            a, token = accept(ROWS, drafts, params, position)
            assert [*drafts[:a], token] == plain[: a + 1]
            assert accept(ROWS, drafts, params, position) == (a, token)



class TruthTarget:
    """A target whose token at position i is always `truth[i]`: it judges each pass as a swarm's
    last node does (a chained pass only if the one ahead held whole and ended with its first
    draft), runs plain runs from where the sequence stands, and can lose the passes in flight
    once, as a failed route does."""

    def __init__(self, truth: list[int], prompt: int, lose_at: int = 0) -> None:
        self.truth, self.held, self.lose_at = truth, prompt, lose_at  # held: positions the target keeps
        self.answers: list[tuple[int, int, bool]] = []  # (accepted, token, cancelled) per pass in flight
        self.sent: list[Pass] = []
        self.chain_token: int | None = None

    async def step(self, ids: Sequence[int], params: SamplingParams) -> int:
        return self.truth[self.held]

    async def plain(self, last: int, n: int, params: SamplingParams, stop: Sequence[int]) -> AsyncGenerator[int, None]:
        assert last == self.truth[self.held] and not self.answers  # from the last token, nothing in flight
        for _ in range(n):
            self.held += 1
            yield self.truth[self.held]

    async def send(self, sent: Pass) -> None:
        self.sent.append(sent)
        if len(self.sent) == self.lose_at:
            self.answers.clear()
            raise PassesLost("the route failed")
        if sent.chained and sent.ids[0] != self.chain_token:
            self.chain_token = None
            self.answers.append((0, 0, True))
            return
        assert sent.ids[0] == self.truth[sent.position]  # what it builds on is right, or it was cancelled
        judged = sent.ids[1:]
        accepted = next((i for i, d in enumerate(judged) if d != self.truth[sent.position + 1 + i]), len(judged))
        token = self.truth[sent.position + 1 + accepted]
        self.chain_token = token if accepted == len(judged) else None
        self.answers.append((accepted + sent.chained, token, False))
        self.held = sent.position + 1 + accepted

    async def receive(self, sent: Pass) -> tuple[int, int]:
        accepted, token, cancelled = self.answers.pop(0)
        assert not (cancelled and sent.live), "a live pass was cancelled"
        return accepted, token


def speculate(target: TruthTarget, count: int, depth: int, stats: GenerationStats) -> list[int]:
    async def propose(context: list[int], k: int) -> list[int]:
        return PromptLookup().propose(context, k)

    async def run() -> list[int]:
        stream = speculative_tokens(target.step, propose, target, target.plain, target.truth[: target.held], count,
                                    SamplingParams(), (), AdaptiveWindow(k_max=4), stats, 8, depth)  # fmt: skip
        return [token async for token in stream]

    return asyncio.run(run())


# a sequence that repeats with changes: lookup proposes well, and is sometimes wrong
TRUTH = [1, 2, 3, 4, 5, 6, 7, 8] * 3 + [1, 2, 3, 9, 5, 6, 7, 8] * 2 + [10 + i for i in range(20)] + [1, 2, 3, 4] * 12


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_pipelined_passes_give_the_targets_tokens_and_read_every_answer(depth: int) -> None:
    target, stats = TruthTarget(TRUTH, prompt=9), GenerationStats()
    tokens = speculate(target, 80, depth, stats)
    assert tokens == TRUTH[9:89]
    assert not target.answers  # every pass sent was answered and read, the last ones too
    assert len(tokens) - 1 == stats.draft_accepted + stats.passes
    if depth > 1:  # passes went out chained, some held and some were dropped behind a miss
        assert stats.passes_chained > 0 and stats.passes_dropped > 0, stats
    else:
        assert not any(p.chained for p in target.sent)


def test_passes_lost_with_the_route_are_proposed_again() -> None:
    target, stats = TruthTarget(TRUTH, prompt=9, lose_at=4), GenerationStats()
    assert speculate(target, 60, 2, stats) == TRUTH[9:69]
    again = target.sent[4]  # after the loss: from the last token received, not chained
    assert not again.chained and again.position <= target.sent[3].position


def test_speculation_stops_at_the_count_and_leaves_nothing_unread() -> None:
    for count in (1, 2, 5, 17):
        target = TruthTarget(TRUTH, prompt=9)
        assert speculate(target, count, 3, GenerationStats()) == TRUTH[9 : 9 + count]
        assert not target.answers
