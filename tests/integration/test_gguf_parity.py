"""A real GGUF model against transformers: SmolLM2-135M-Instruct, its Q4_1 file exported at float32.

tests/golden/gguf/make_gguf_goldens.py had transformers load the same file (dequantized to
float32) and wrote its logits at a subset of the vocabulary (its top 64 per position and 192
drawn ids) for every prefill position and 8 cached decode steps, and 64 greedy tokens; these
tests need no torch. Tolerance as for the tiny goldens: max |diff| <= 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from swarm.generation import GenerationRequest
from swarm.local import LocalModel
from swarm.package import ModelPackage
from tests.conftest import FRANCE_QUESTION, GOLDEN, ExportFn

GOLDEN_FILE = GOLDEN / "gguf" / "smollm2.npz"
CASES = ["chat", "story", "code"]
PLAIN_PROMPTS = {
    "story": "Once upon a time, in a small village by the sea,",
    "code": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN_FILE))


@pytest.fixture(scope="module")
def float32_model(export_package: ExportFn, smollm2_gguf) -> LocalModel:  # type: ignore[no-untyped-def]
    package: ModelPackage = export_package(smollm2_gguf, dtype="float32")
    assert package.manifest.quantization is None and package.manifest.dtype == "float32"
    model = LocalModel(package)
    yield model
    model.close()


@pytest.mark.parametrize("case", CASES)
def test_prefill_and_cached_decode_match_transformers(float32_model: LocalModel, golden: dict, case: str) -> None:
    ids = golden[f"{case}/input_ids"].tolist()
    session = float32_model.session(len(ids) + 16)
    prefill = session.logits(ids)
    decode = np.stack([session.logits([int(t)])[0] for t in golden[f"{case}/decode_ids"]])
    ours = np.take_along_axis(np.concatenate([prefill, decode]), golden[f"{case}/logit_index"].astype(np.int64), 1)
    error = np.abs(ours - golden[f"{case}/logits"])
    assert error[: len(ids)].max() <= TOLERANCE, f"prefill differs by {error[: len(ids)].max():.2e}"
    assert error[len(ids) :].max() <= TOLERANCE, f"cached decode differs by {error[len(ids) :].max():.2e}"


@pytest.mark.parametrize("case", CASES)
def test_64_greedy_tokens_equal_transformers(float32_model: LocalModel, golden: dict, case: str) -> None:
    request = GenerationRequest(tuple(golden[f"{case}/input_ids"].tolist()), max_tokens=64, stop_on_eos=False)
    assert list(float32_model.generate_ids(request)) == golden[f"{case}/greedy_ids"].tolist()


def test_prompts_tokenize_as_the_goldens_were_fed(float32_model: LocalModel, golden: dict) -> None:
    """The chat template from the GGUF and its tokenizer give transformers' ids for the question;
    plain prompts get the BOS the GGUF's add_bos_token asks for, as llama.cpp does."""
    codec = float32_model.codec
    assert codec.encode_chat(FRANCE_QUESTION) == golden["chat/input_ids"].tolist()
    for case, text in PLAIN_PROMPTS.items():
        assert codec.encode(text) == golden[f"{case}/input_ids"].tolist()


def test_the_chat_answer_names_paris(float32_model: LocalModel) -> None:
    assert float32_model.chat(FRANCE_QUESTION, max_tokens=24, temperature=0) == "The capital of France is Paris."
