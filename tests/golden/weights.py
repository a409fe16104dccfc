"""The tiny golden checkpoints' weights, rebuilt from a seed: no weights live in the repository.

Each case folder holds `weights.json` (the seed and every tensor's name and shape, in order) next
to its config, tokenizer and `golden.npz`. `make_goldens.py` draws the weights here and loads
them into the transformers model it takes the goldens from; the tests draw them again, without
torch, and write `model.safetensors` into a copy of the case folder. numpy's legacy
`RandomState` stream is frozen across numpy versions, and a sha256 over the drawn bytes,
recorded by make_goldens, makes any difference fail loudly rather than compare against the
wrong goldens.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

WEIGHT_STD = 0.2  # also written as initializer_range
BIAS_STD = 0.1
NORM_JITTER = 0.1  # norm weights are 1 + NORM_JITTER * randn
WEIGHTS_FILE = "weights.json"


def draw(seed: int, tensors: list[tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    """Every tensor, in order, from one stream: norms near 1, small biases, the rest N(0, 0.2)."""
    rng = np.random.RandomState(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in tensors:
        noise = rng.standard_normal(shape).astype(np.float32)
        if "norm" in name:
            out[name] = (1.0 + NORM_JITTER * noise).astype(np.float32)
        elif name.endswith(".bias"):
            out[name] = (BIAS_STD * noise).astype(np.float32)
        else:
            out[name] = (WEIGHT_STD * noise).astype(np.float32)
    return out


def digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, array in weights.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def materialize(case: Path, dest: Path) -> Path:
    """A copy of the case folder at `dest` with its model.safetensors drawn again."""
    from safetensors.numpy import save_file

    spec = json.loads((case / WEIGHTS_FILE).read_text())
    weights = draw(spec["seed"], [(name, shape) for name, shape in spec["tensors"]])
    if digest(weights) != spec["sha256"]:
        raise RuntimeError(f"{case.name}: the redrawn weights differ from the ones the goldens were made with")
    shutil.copytree(case, dest)
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest
