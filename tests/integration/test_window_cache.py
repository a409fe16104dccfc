"""Sliding-window layers keep only their window of KV cache (swarm/kvcache.py), and a node's
admission control counts exactly that. The goldens of every sliding family already run through it
(windows of 4 and 5 against a 12-token prompt and 8 cached steps: prompts run in window-sized
steps and the local caches roll over several times); these tests cover sizes, long sequences and
admission."""

from __future__ import annotations

import numpy as np
import pytest

from swarm.client import Swarm
from swarm.errors import CapacityExceeded
from swarm.generation import GenerationRequest
from swarm.kvcache import kv_cache_bytes
from swarm.local import LocalModel
from swarm.package import Architecture, ModelPackage
from swarm.runtime import RuntimeOptions
from swarm.span import SpanRuntime
from tests.conftest import ExportFn, golden_checkpoint
from tests.helpers import LocalCluster, close_after_test

PER_POSITION = 2 * 1 * 16 * 4  # K and V, one kv head, cache head dim 16, float32 (the gemma3 golden)


@pytest.fixture(scope="module")
def gemma3(export_package: ExportFn) -> ModelPackage:
    return export_package(golden_checkpoint("gemma3"))  # layers local, global, local; window 5


def test_a_local_layer_holds_twice_its_window_less_one(gemma3: ModelPackage) -> None:
    span = SpanRuntime(gemma3, 0, 3, RuntimeOptions())
    caches = span.new_caches(100)
    assert [caches[0].arrays(i)[0].shape[2] for i in range(3)] == [9, 100, 9]
    assert span.cache_bytes(100) == sum(c.nbytes for c in caches) == PER_POSITION * (9 + 100 + 9)
    # a session shorter than the window's cap keeps every position everywhere
    assert span.cache_bytes(6) == PER_POSITION * 3 * 6


def test_gemma3_270m_at_4096_tokens_needs_a_third_of_the_cache() -> None:
    arch = Architecture("gemma3", 640, 18, 4, 1, 256, 256, 2048, 262144, 1e-6, 1e6, "default", True, 512,
                        tuple(None if i % 6 == 5 else 512 for i in range(18)))  # fmt: skip
    full, windowed = (kv_cache_bytes(arch, range(18), 4096, windowed=w) for w in (False, True))
    assert full == 2 * 256 * 4 * 18 * 4096  # 151 MB
    assert windowed == 2 * 256 * 4 * (15 * 1023 + 3 * 4096)  # 56 MB
    assert windowed / full < 0.38


@pytest.mark.parametrize("name", ["gemma3", "mistral_sliding", "qwen2_sliding", "gemma2"])
def test_long_sequences_do_not_depend_on_how_they_are_fed(export_package: ExportFn, name: str) -> None:
    """90 tokens (18 windows) at once, in uneven chunks, and one by one: the local caches roll over
    at different points, the logits do not change."""
    model = close_after_test(LocalModel(export_package(golden_checkpoint(name), layers_per_block=2)))
    ids = np.random.default_rng(1).integers(3, model.manifest.architecture.vocab_size, 90).tolist()
    whole = model.session(100).logits(ids)
    chunked_session = model.session(100)
    chunked = np.concatenate([chunked_session.logits(ids[a:b]) for a, b in [(0, 7), (7, 8), (8, 31), (31, 90)]])
    stepwise_session = model.session(100)
    stepwise = np.concatenate([stepwise_session.logits(ids[:1])] + [stepwise_session.logits([t]) for t in ids[1:]])
    np.testing.assert_allclose(chunked, whole, atol=1e-4)
    np.testing.assert_allclose(stepwise, whole, atol=1e-4)


def test_admission_counts_the_window(cluster: LocalCluster, gemma3: ModelPackage) -> None:
    """A node whose budget holds a 100-token session's windowed cache, but not its full one, admits it."""
    m = gemma3.manifest
    weights = m.embedding.bytes + m.head.bytes + sum(b.bytes for b in m.blocks)
    golden = np.load(golden_checkpoint("gemma3") / "golden.npz")
    prompt = golden["input_ids"][0].tolist()
    budget = weights + PER_POSITION * (9 + 100 + 9) + 512  # the full cache would need 300 positions
    assert budget < weights + PER_POSITION * 3 * 100
    node = cluster.start(gemma3.root, max_memory=budget)
    with Swarm(peers=[node.address]) as swarm:
        request = GenerationRequest(tuple(prompt), max_tokens=100 - len(prompt), stop_on_eos=False)
        tokens = list(swarm.generate_ids(request))
        assert tokens[:24] == golden["greedy_ids"].tolist()
        too_long = GenerationRequest(tuple(prompt), max_tokens=120 - len(prompt), stop_on_eos=False)
        with pytest.raises(CapacityExceeded):
            list(swarm.generate_ids(too_long))
