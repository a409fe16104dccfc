"""Speculative decoding in the local runner (swarm/local.py, swarm/speculative.py) on real models:
the tokens plain decoding gives, caches rolled back as if rejected drafts never ran, draft models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel, LocalSession, model_drafter
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from swarm.speculative import AdaptiveWindow, Drafter, PromptLookup
from tests.conftest import STORIES_PROMPT_IDS, STORIES_REFERENCE_IDS, ExportFn, golden_checkpoint
from tests.helpers import close_after_test, collect

GREEDY = SamplingParams()


@pytest.fixture
def stories(stories_package: ModelPackage) -> LocalModel:
    return close_after_test(LocalModel(stories_package))


@pytest.fixture(scope="module")
def gemma3(export_package: ExportFn) -> ModelPackage:
    return export_package(golden_checkpoint("gemma3"))  # layers local, global, local; window 5


def run(model: LocalModel, n: int, speculative: str | None, params: SamplingParams = GREEDY,
        prompt: list[int] = STORIES_PROMPT_IDS) -> tuple[list[int], GenerationStats]:  # fmt: skip
    stats = GenerationStats()
    request = GenerationRequest(tuple(prompt), n, params, stop_on_eos=False, speculative=speculative)
    return list(model.generate_ids(request, stats)), stats


def test_speculative_greedy_is_the_reference(stories: LocalModel, stories_package: ModelPackage) -> None:
    for source in ("lookup", str(stories_package.root)):  # prompt lookup; stories260K drafting for itself
        tokens, stats = run(stories, 40, source)
        assert tokens == STORIES_REFERENCE_IDS
        assert stats.generated_tokens - 1 == stats.draft_accepted + stats.passes  # each pass: a + 1 tokens
    assert stats.draft_accepted == stats.draft_proposed > 30  # a model agrees with itself
    assert stats.passes < 8 and stats.tokens_per_pass > 4
    assert "tokens per pass" in stats.summary()


def test_speculative_greedy_equals_plain_greedy_where_drafts_are_accepted(stories: LocalModel) -> None:
    plain, _ = run(stories, 200, None)
    tokens, stats = run(stories, 200, "lookup")
    assert tokens == plain
    assert stats.draft_accepted > 0 and stats.draft_proposed > stats.draft_accepted  # both paths taken
    assert stats.generated_tokens - 1 == stats.draft_accepted + stats.passes


def test_seeded_speculative_sampling_reproduces_plain_seeded_sampling(
    stories: LocalModel, stories_package: ModelPackage
) -> None:
    for seed in (0, 7):
        params = SamplingParams(temperature=0.8, top_p=0.95, seed=seed)
        plain, _ = run(stories, 100, None, params)
        for source in ("lookup", str(stories_package.root)):
            tokens, stats = run(stories, 100, source, params)
            assert tokens == plain
            assert run(stories, 100, source, params)[0] == tokens
        assert stats.draft_accepted > 0
    assert run(stories, 100, "lookup", SamplingParams(temperature=0.8, seed=1))[0] != tokens


def test_stop_ids_and_count_end_the_speculative_stream(stories: LocalModel) -> None:
    session = stories.session(64)
    drafter = FixedDrafter(STORIES_REFERENCE_IDS)  # drafts the reference: everything is accepted
    stats = GenerationStats()
    tokens = asyncio.run(collect(session.speculative_tokens(STORIES_PROMPT_IDS, 30, GREEDY, (426,), drafter,
                                                            AdaptiveWindow(k_start=8), stats)))  # fmt: skip
    assert tokens == STORIES_REFERENCE_IDS[: STORIES_REFERENCE_IDS.index(426) + 1]  # the first "." stops it
    tokens = asyncio.run(collect(stories.session(64).speculative_tokens(STORIES_PROMPT_IDS, 3, GREEDY, (), drafter)))
    assert tokens == STORIES_REFERENCE_IDS[:3]


class FixedDrafter:
    """Proposes the continuation of `ids` after the context's generated part (the prompt is STORIES')."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def propose(self, context: list[int], k: int) -> list[int]:
        done = len(context) - len(STORIES_PROMPT_IDS)
        return self.ids[done : done + k]


def rejected_pass(session: LocalSession) -> int:
    """The prompt, then a verify pass of [reference 0, reference 1, reference 2, 5, 6, 7]: two drafts
    accepted, 5 rejected; the caches are rolled back. Returns the next token."""
    assert session.next_token(STORIES_PROMPT_IDS, GREEDY) == STORIES_REFERENCE_IDS[0]
    accepted, token = session.verify(STORIES_REFERENCE_IDS[0], [*STORIES_REFERENCE_IDS[1:3], 5, 6, 7], GREEDY)
    assert (accepted, token) == (2, STORIES_REFERENCE_IDS[3])
    assert session.length == len(STORIES_PROMPT_IDS) + 3
    return token


def test_rollback_leaves_the_cache_as_if_rejected_drafts_never_ran(stories: LocalModel) -> None:
    """Bit for bit against a fresh session that ran the same steps without the rejected tokens: the
    accepted part of the verify pass as one step. Against one fed those tokens one by one, within
    1e-4: a 3-token step and three 1-token steps differ in the last float bits (measured 6e-6)."""
    rolled = stories.session(64)
    token = rejected_pass(rolled)
    after = rolled.logits([token, STORIES_REFERENCE_IDS[4]])
    fresh = stories.session(64)
    fresh.logits(STORIES_PROMPT_IDS)
    fresh.logits(STORIES_REFERENCE_IDS[:3])
    np.testing.assert_array_equal(after, fresh.logits([token, STORIES_REFERENCE_IDS[4]]))
    stepwise = stories.session(64)
    stepwise.logits(STORIES_PROMPT_IDS)
    for t in STORIES_REFERENCE_IDS[:3]:
        stepwise.logits([t])
    np.testing.assert_allclose(after, stepwise.logits([token, STORIES_REFERENCE_IDS[4]]), atol=1e-4)


def test_rollback_refuses_what_it_cannot_undo(stories: LocalModel, gemma3: ModelPackage) -> None:
    session = stories.session(64)
    session.logits(STORIES_PROMPT_IDS)
    with pytest.raises(InvalidRequest, match="cannot roll"):
        session.truncate(len(STORIES_PROMPT_IDS) + 1)
    session.truncate(1)  # a full cache goes back anywhere
    assert session.length == 1
    windowed = close_after_test(LocalModel(gemma3)).session(100)
    windowed.logits(list(range(3, 23)))  # 20 tokens through a window of 5: the ring has moved on
    assert windowed.draft_limit == 4  # a step of 5 fits the ring's room for new keys: k <= 4
    windowed.truncate(16)  # back within the last step (a verify pass): the keys it needs are there
    with pytest.raises(InvalidRequest, match="sliding-window"):
        windowed.truncate(10)


def test_speculation_through_sliding_window_caches(gemma3: ModelPackage) -> None:
    """Self-drafting on gemma3's golden (window 5): verify passes roll its local rings over and back."""
    model = close_after_test(LocalModel(gemma3))
    prompt = np.load(golden_checkpoint("gemma3") / "golden.npz")["input_ids"][0].tolist()
    plain, _ = run(model, 60, None, prompt=prompt)
    tokens, stats = run(model, 60, str(gemma3.root), prompt=prompt)
    assert tokens == plain
    assert stats.draft_accepted == stats.draft_proposed > 40
    lookup, _ = run(model, 60, "lookup", prompt=prompt)
    assert lookup == plain


def test_model_drafter_rolls_its_own_caches_back(stories: LocalModel) -> None:
    drafter = model_drafter(stories, stories.manifest, 64)
    context = STORIES_PROMPT_IDS + STORIES_REFERENCE_IDS[:3]
    assert drafter.propose(context, 4) == STORIES_REFERENCE_IDS[3:7]  # greedy: the reference
    diverged = [*context[:-1], 5]  # its last token rejected: drafts from there, as a fresh drafter's
    fresh: Drafter = model_drafter(stories, stories.manifest, 64)
    assert drafter.propose(diverged, 3) == fresh.propose(diverged, 3)
    assert drafter.propose(context + STORIES_REFERENCE_IDS[3:5], 2) == STORIES_REFERENCE_IDS[5:7]
    assert model_drafter(stories, stories.manifest, 8).propose(context, 4) == STORIES_REFERENCE_IDS[3:4]  # its room


def test_a_draft_model_with_another_tokenizer_is_refused(stories: LocalModel, gemma3: ModelPackage) -> None:
    with pytest.raises(InvalidRequest, match="another tokenizer"):
        run(stories, 5, str(gemma3.root))
    assert isinstance(stories.drafter("lookup", 10), PromptLookup)
