"""The real TinyStories model: exported, run locally, token for token against the reference."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from swarm.errors import InvalidRequest
from swarm.generation import GenerationRequest, GenerationStats, generate_ids
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.sampling import SamplingParams
from tests.conftest import (
    STORIES,
    STORIES_PROMPT,
    STORIES_PROMPT_IDS,
    STORIES_REFERENCE_IDS,
    STORIES_REFERENCE_TEXT,
    ExportFn,
)
from tests.helpers import close_after_test


def greedy(model: LocalModel, prompt_ids: list[int], n: int) -> list[int]:
    request = GenerationRequest(tuple(prompt_ids), max_tokens=n, stop_on_eos=False)
    return list(model.generate_ids(request))


def test_tokenizer_matches_reference(stories_package: ModelPackage) -> None:
    assert close_after_test(LocalModel(stories_package)).codec.encode(STORIES_PROMPT) == STORIES_PROMPT_IDS


def test_greedy_reproduces_reference_tokens(stories_package: ModelPackage) -> None:
    model = close_after_test(LocalModel(stories_package))
    assert greedy(model, STORIES_PROMPT_IDS, 40) == STORIES_REFERENCE_IDS
    assert STORIES_PROMPT + model.generate(STORIES_PROMPT, max_tokens=40) == STORIES_REFERENCE_TEXT


@pytest.mark.parametrize("options", [{"layers_per_block": 2}, {"layers_per_block": 5}, {"dtype": "float16"}])
def test_block_granularity_and_fp16_storage_keep_reference(export_package: ExportFn, options: dict) -> None:
    model = close_after_test(LocalModel(export_package(STORIES, **options)))
    assert greedy(model, STORIES_PROMPT_IDS, 40) == STORIES_REFERENCE_IDS


def test_cached_decode_equals_full_recomputation(stories_package: ModelPackage) -> None:
    model = close_after_test(LocalModel(stories_package))
    sequence = STORIES_PROMPT_IDS + STORIES_REFERENCE_IDS[:20]
    full = model.session().logits(sequence)
    cached = model.session()
    stepwise = [cached.logits(STORIES_PROMPT_IDS)[-1]]
    stepwise += [cached.logits([t])[-1] for t in STORIES_REFERENCE_IDS[:20]]
    np.testing.assert_allclose(np.stack(stepwise), full[len(STORIES_PROMPT_IDS) - 1 :], atol=1e-4)


def test_end_of_sequence_stops_generation(stories_package: ModelPackage) -> None:
    model = close_after_test(LocalModel(stories_package))
    period = 426  # the reference text's first "." is its 11th token; treat it as end of sequence
    request = GenerationRequest(tuple(STORIES_PROMPT_IDS), max_tokens=40)

    async def run(request: GenerationRequest) -> list[int]:
        loop = generate_ids(model.session(), request, eos_ids=[period], stats=GenerationStats())
        return [token async for token in loop]

    assert asyncio.run(run(request)) == STORIES_REFERENCE_IDS[:11]
    ignoring = GenerationRequest(tuple(STORIES_PROMPT_IDS), max_tokens=40, stop_on_eos=False)
    assert asyncio.run(run(ignoring)) == STORIES_REFERENCE_IDS


def test_seeded_sampling_is_reproducible(stories_package: ModelPackage) -> None:
    model = close_after_test(LocalModel(stories_package))
    params = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=11)
    request = GenerationRequest(tuple(STORIES_PROMPT_IDS), 30, params, stop_on_eos=False)
    first, second = list(model.generate_ids(request)), list(model.generate_ids(request))
    assert first == second
    other = list(model.generate_ids(GenerationRequest(tuple(STORIES_PROMPT_IDS), 30, SamplingParams(0.9, seed=12))))
    assert other != first


@pytest.mark.parametrize("quantize, min_match", [("int8", 40), ("int4", 8)])
def test_quantized_packages_generate(export_package: ExportFn, quantize: str, min_match: int) -> None:
    package = export_package(STORIES, quantize=quantize)
    assert package.manifest.quantization == quantize
    fp32_bytes = sum(b.bytes for b in export_package(STORIES).manifest.blocks)
    # rotary tables and norms stay float32, so the files shrink a little less than the weights
    assert sum(b.bytes for b in package.manifest.blocks) < fp32_bytes / (2 if quantize == "int8" else 2.5)
    out = greedy(close_after_test(LocalModel(package)), STORIES_PROMPT_IDS, 40)
    assert len(out) == 40
    agree = next((i for i, (a, b) in enumerate(zip(out, STORIES_REFERENCE_IDS, strict=False)) if a != b), 40)
    assert agree >= min_match


def test_stats_are_filled(stories_package: ModelPackage) -> None:
    stats = GenerationStats()
    text = "".join(close_after_test(LocalModel(stories_package)).stream(STORIES_PROMPT, max_tokens=10, stats=stats))
    assert text.startswith(", there was")
    assert stats.prompt_tokens == 5 and stats.generated_tokens == 10
    assert stats.ttft_s > 0 and stats.decode_tokens_per_s > 0 and len(stats.step_s) == 9


def test_a_decode_step_hands_back_its_own_array(stories_package: ModelPackage) -> None:
    """Single-token steps refill one binding per cache in place; what a step returned must not
    change under the caller, and each step must equal recomputing the whole sequence."""
    model = close_after_test(LocalModel(stories_package))
    block, embed = model.span.blocks[0], model.span.embedding.forward
    cache = block.new_cache(8)
    block.forward(embed(np.array([[1, 2, 3]])), cache)
    first = block.forward(embed(np.array([[4]])), cache)
    kept = first.copy()
    second = block.forward(embed(np.array([[5]])), cache)
    assert cache.length == 5 and np.array_equal(first, kept) and not np.array_equal(first, second)
    whole = block.forward(embed(np.array([[1, 2, 3, 4, 5]])), block.new_cache(8))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole[:, 3:], atol=1e-5)


def test_a_decode_step_refuses_a_misshaped_hidden_state(stories_package: ModelPackage) -> None:
    block = close_after_test(LocalModel(stories_package)).span.blocks[0]
    cache = block.new_cache(4)
    with pytest.raises(InvalidRequest, match="expected"):
        block.forward(np.zeros((1, 1, 1), np.float32), cache)  # would broadcast into every feature
    assert cache.length == 0
