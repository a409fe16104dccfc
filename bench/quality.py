"""What quantization costs: perplexity on a fixed text and greedy agreement with float32."""

from __future__ import annotations

import numpy as np

from swarm.generation import GenerationRequest
from swarm.local import LocalModel

# A fixed TinyStories-style text (written for this benchmark, not from the training set).
TEXT = (
    "Once upon a time, there was a little dog named Max. Max liked to run in the big green park. "
    "One day, Max saw a red ball under a tree. He wanted to play with it, so he ran to the tree. "
    'A small girl named Sue was there too. Sue said, "Hello, Max! Do you want to play with me?" '
    "Max wagged his tail and barked. They played with the ball all day, and they were very happy."
)


def perplexity(model: LocalModel, text: str = TEXT) -> float:
    ids = model.codec.encode(text)
    logits = model.session(len(ids)).logits(ids)[:-1].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(ids) - 1), ids[1:]].mean()
    return float(np.exp(nll))


def greedy_ids(model: LocalModel, prompt: str = "Once upon a time", n: int = 40) -> list[int]:
    return list(model.generate_ids(GenerationRequest(tuple(model.codec.encode(prompt)), n, stop_on_eos=False)))


def agreement(ids: list[int], reference: list[int]) -> int:
    """How many leading tokens equal the reference's."""
    return next(
        (i for i, (a, b) in enumerate(zip(ids, reference, strict=False)) if a != b), min(len(ids), len(reference))
    )
