"""Speculative decoding's pure parts (swarm/speculative.py): drafts, the window, the acceptance rule."""

from __future__ import annotations

import numpy as np
import pytest

from swarm.errors import InvalidRequest
from swarm.sampling import SamplingParams, probabilities, sample
from swarm.speculative import AdaptiveWindow, PromptLookup, accept


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


def test_window_refuses_impossible_passes() -> None:
    with pytest.raises(InvalidRequest):
        AdaptiveWindow().observe(3, 0)  # more drafts than k = 2
    with pytest.raises(InvalidRequest):
        AdaptiveWindow().observe(1, 2)
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
