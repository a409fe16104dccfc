"""Decode steps of several sessions in one pass give each session exactly its own result."""

from __future__ import annotations

import numpy as np
import pytest

from swarm.local import LocalModel
from tests.conftest import STORIES, ExportFn, golden_checkpoint
from tests.helpers import close_after_test


def step_alone(model: LocalModel, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    session = model.session(64)
    logits = [session.logits(prompt)[-1]]
    tokens = [int(logits[-1].argmax())]
    for _ in range(steps):
        logits.append(session.logits([tokens[-1]])[-1])
        tokens.append(int(logits[-1].argmax()))
    return tokens, np.stack(logits)


@pytest.mark.parametrize(
    "checkpoint",
    [STORIES, golden_checkpoint("mistral_sliding"), golden_checkpoint("qwen2"), golden_checkpoint("gemma3"),
     golden_checkpoint("qwen2_sliding")],
)  # fmt: skip
def test_batched_steps_equal_single_steps(export_package: ExportFn, checkpoint) -> None:  # type: ignore[no-untyped-def]
    model = close_after_test(LocalModel(export_package(checkpoint, layers_per_block=2)))
    vocab = model.manifest.architecture.vocab_size
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, size=n).tolist() for n in (1, 3, 7, 12)]  # different lengths per row
    alone = [step_alone(model, p, 10) for p in prompts]
    sessions = [model.session(64) for _ in prompts]
    tokens = [[int(s.logits(p)[-1].argmax())] for s, p in zip(sessions, prompts, strict=True)]
    logits = [[] for _ in prompts]  # type: list[list[np.ndarray]]
    for _ in range(10):
        x = model.span.embedding.forward(np.array([[t[-1]] for t in tokens]))
        for index, block in enumerate(model.span.blocks):
            x = block.forward_batch(x, [s._caches[index] for s in sessions])
        step = model.span.head.forward(x)[:, -1]
        for row in range(len(prompts)):
            logits[row].append(step[row])
            tokens[row].append(int(step[row].argmax()))
    for row, (want_tokens, want_logits) in enumerate(alone):
        assert tokens[row] == want_tokens
        np.testing.assert_allclose(np.stack(logits[row]), want_logits[1:], atol=1e-5)
