"""Logits parity with Hugging Face transformers on tiny random checkpoints of each family.

tests/golden/make_goldens.py wrote the checkpoints and transformers' outputs; these tests
need no torch. Tolerance: max |diff| <= 1e-4 in float32, on a prefill and 8 cached decode steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swarm.generation import GenerationRequest
from swarm.local import LocalModel
from tests.conftest import GOLDEN, ExportFn, golden_checkpoint
from tests.helpers import close_after_test

CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "golden.npz").is_file())
TOLERANCE = 1e-4


def test_every_family_has_a_golden() -> None:
    assert {"llama_gqa_untied", "llama_rope_llama3", "llama_rope_linear", "mistral", "mistral_sliding",
            "qwen2", "qwen2_rope_yarn"} <= set(CASES)  # fmt: skip


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Path:
    return golden_checkpoint(request.param)


@pytest.mark.parametrize("layers_per_block", [1, 2])
def test_prefill_and_cached_decode_match_transformers(
    export_package: ExportFn, case: Path, layers_per_block: int
) -> None:
    golden = np.load(case / "golden.npz")
    session = close_after_test(LocalModel(export_package(case, layers_per_block=layers_per_block))).session(64)
    prefill = session.logits(golden["input_ids"][0].tolist())
    assert np.abs(prefill - golden["prefill_logits"][0]).max() <= TOLERANCE
    decode = np.stack([session.logits([int(t)])[0] for t in golden["decode_ids"]])
    assert np.abs(decode - golden["decode_logits"]).max() <= TOLERANCE


def test_greedy_tokens_match_transformers(export_package: ExportFn, case: Path) -> None:
    golden = np.load(case / "golden.npz")
    model = close_after_test(LocalModel(export_package(case)))
    request = GenerationRequest(tuple(golden["input_ids"][0].tolist()), max_tokens=16, stop_on_eos=False)
    assert list(model.generate_ids(request)) == golden["greedy_ids"].tolist()


def test_cached_decode_equals_full_recomputation(export_package: ExportFn, case: Path) -> None:
    golden = np.load(case / "golden.npz")
    model = close_after_test(LocalModel(export_package(case)))
    prompt, extra = golden["input_ids"][0].tolist(), golden["decode_ids"].tolist()
    full = model.session(64).logits(prompt + extra)
    cached = model.session(64)
    cached.logits(prompt)
    stepwise = np.stack([cached.logits([t])[0] for t in extra])
    np.testing.assert_allclose(stepwise, full[len(prompt) :], atol=TOLERANCE)


def _as_transformers4_config(config: dict) -> dict:  # type: ignore[type-arg]
    """The same model as transformers 4.x wrote it: top-level rope_theta, rope_scaling with `type`."""
    old = dict(config)
    rope = dict(old.pop("rope_parameters"))
    old["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    old["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **rope}
    if old.get("model_type") == "qwen2":
        old["sliding_window"] = 32768  # 4.x configs carry a window that use_sliding_window turns off
    return old


@pytest.mark.parametrize("name", ["llama_rope_llama3", "qwen2_rope_yarn", "qwen2"])
def test_transformers4_config_spelling(export_package: ExportFn, tmp_path: Path, name: str) -> None:
    import json
    import shutil

    src = Path(shutil.copytree(golden_checkpoint(name), tmp_path / name))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(_as_transformers4_config(config)))
    golden = np.load(src / "golden.npz")
    package = export_package(src)
    assert package.manifest.architecture.sliding_window is None
    prefill = close_after_test(LocalModel(package)).session(64).logits(golden["input_ids"][0].tolist())
    assert np.abs(prefill - golden["prefill_logits"][0]).max() <= TOLERANCE
