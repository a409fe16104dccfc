"""tokenizer.json rebuilt from real GGUF files' metadata, against transformers' and llama.cpp's ids.

The goldens (tests/golden/gguf_tokenizers/*.json, written by make_goldens.py there) hold, for ~40
strings per file, the ids transformers' own GGUF conversion gives and the ids llama.cpp gives for the
same file. `expected_ids` is both where they agree; where they disagree the golden says which one it
follows and why. The real files come from /tmp/models or the registry packages (tests/gguf_models.py);
a missing file fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf
import pytest
from tokenizers import Tokenizer

from export.errors import ExportError
from export.gguf_tokenizer import GgufTokenizer, tokenizer_from_gguf
from tests.gguf_models import gemma3_gguf, smollm2_gguf
from tests.golden.gguf_tokenizers.variants import VARIANTS, apply

GOLDENS = Path(__file__).resolve().parents[1] / "golden" / "gguf_tokenizers"
FILES: dict[str, Callable[[], Path]] = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}
GOLDEN: dict[str, dict[str, Any]] = {name: json.loads((GOLDENS / f"{name}.json").read_text()) for name in FILES}

Fields = Mapping[str, Any]


@pytest.fixture(scope="module")
def fields() -> dict[str, Fields]:
    """Each real file's metadata, as the exporter's reader hands it over: every key's plain Python value."""
    metadata = {}
    for name, locate in FILES.items():
        reader = gguf.GGUFReader(locate())
        metadata[name] = {key: field.contents() for key, field in reader.fields.items()}
    return metadata


@pytest.fixture(scope="module")
def built(fields: dict[str, Fields]) -> dict[str, GgufTokenizer]:
    return {name: tokenizer_from_gguf(metadata) for name, metadata in fields.items()}


def _encode(tok: GgufTokenizer, text: str, special: bool = False) -> list[int]:
    return list(tok.tokenizer.encode(text, add_special_tokens=special).ids)


BASE_CASES = [(name, i) for name in FILES for i in range(len(GOLDEN[name]["cases"]))]
VARIANT_CASES = [
    (name, variant, i)
    for name in FILES
    for variant, body in GOLDEN[name]["variants"].items()
    for i in range(len(body["cases"]))
]


@pytest.mark.parametrize(("name", "index"), BASE_CASES, ids=[f"{n}-{i}" for n, i in BASE_CASES])
def test_ids_equal_transformers_and_llama_cpp(built: dict[str, GgufTokenizer], name: str, index: int) -> None:
    case = GOLDEN[name]["cases"][index]
    if "follows" not in case:  # the golden's own claim: both references gave these ids
        assert case["expected_ids"] == case["transformers_ids"] == case["llama_cpp_ids"]
    assert _encode(built[name], case["text"]) == case["expected_ids"], case.get("why", case["text"])


@pytest.mark.parametrize(("name", "index"), BASE_CASES, ids=[f"{n}-{i}" for n, i in BASE_CASES])
def test_decode_round_trips(built: dict[str, GgufTokenizer], name: str, index: int) -> None:
    case = GOLDEN[name]["cases"][index]
    tok = built[name].tokenizer
    ids = _encode(built[name], case["text"])
    assert tok.decode(ids, skip_special_tokens=False) == case["text"] == case["decoded"]
    assert tok.decode(ids, skip_special_tokens=True) == case["decoded_skip_special"]


@pytest.mark.parametrize(("name", "index"), BASE_CASES, ids=[f"{n}-{i}" for n, i in BASE_CASES])
def test_special_tokens_add_bos_as_the_gguf_says(built: dict[str, GgufTokenizer], name: str, index: int) -> None:
    case, tok = GOLDEN[name]["cases"][index], built[name]
    bos = [tok.bos_token_id] if GOLDEN[name]["gguf_add_bos_token"] else []
    assert _encode(tok, case["text"], special=True) == bos + case["expected_ids"]
    assert _encode(tok, case["text"], special=True) == case["llama_cpp_ids_with_special_tokens"]


@pytest.mark.parametrize(
    ("name", "variant", "index"), VARIANT_CASES, ids=[f"{n}-{v}-{i}" for n, v, i in VARIANT_CASES]
)
def test_variant_ids_equal_the_references(fields: dict[str, Fields], name: str, variant: str, index: int) -> None:
    """The same vocabulary under another pre-tokenizer (or dummy prefix) splits as the references do."""
    body = GOLDEN[name]["variants"][variant]
    case = body["cases"][index]
    base, change, references = VARIANTS[variant]
    assert (base, body["change"], tuple(body["references"])) == (name, change, references), "regenerate the goldens"
    tok = _variant_tokenizer(fields, name, variant)
    keys = {"transformers": "transformers_ids", "llama.cpp": "llama_cpp_ids"}
    if "why" not in case:  # the golden's own claim: every reference that applies gave these ids
        assert all(case[keys[reference]] == case["expected_ids"] for reference in body["references"])
    assert _encode(tok, case["text"]) == case["expected_ids"], case.get("why", case["text"])


_VARIANTS: dict[tuple[str, str], GgufTokenizer] = {}


def _variant_tokenizer(fields: dict[str, Fields], name: str, variant: str) -> GgufTokenizer:
    if (name, variant) not in _VARIANTS:
        _VARIANTS[name, variant] = tokenizer_from_gguf(apply(fields[name], VARIANTS[variant][1]))
    return _VARIANTS[name, variant]


def test_the_goldens_cover_what_the_issue_asks() -> None:
    texts = [case["text"] for case in GOLDEN["smollm2"]["cases"]]
    assert len(texts) >= 40
    assert any("<|im_start|>assistant\n" in t for t in texts)  # a ChatML conversation
    assert any("<start_of_turn>model\n" in case["text"] for case in GOLDEN["gemma3"]["cases"])
    assert set(GOLDEN["smollm2"]["variants"]) == {"pre=gpt-2", "pre=llama-bpe", "pre=qwen2", "pre=smollm"}
    # the extra tokens make each pre-tokenizer's digit rule and llama-bpe's ignore_merges show in the ids
    ids = {v: _variant_case(v, "Call 4512")["expected_ids"] for v in GOLDEN["smollm2"]["variants"]}
    one, two, four, five, twelve, forty_five, zqxv = 33, 34, 36, 37, 49152, 49154, 49155
    assert ids["pre=gpt-2"][1:4] == [216, forty_five, twelve]  # " 4512" is one piece: "45" "12"
    assert ids["pre=llama-bpe"][1:5] == [216, forty_five, one, two]  # "451" "2": at most three digits
    assert ids["pre=qwen2"][1:6] == ids["pre=smollm"][1:6] == [216, four, five, one, two]  # one per digit
    assert zqxv in ids["pre=llama-bpe"]  # taken whole although no merge makes it (ignore_merges)
    assert zqxv not in ids["pre=gpt-2"]


def _variant_case(variant: str, prefix: str) -> dict[str, Any]:
    cases = GOLDEN["smollm2"]["variants"][variant]["cases"]
    return next(case for case in cases if case["text"].startswith(prefix))


@pytest.mark.parametrize(
    ("name", "text", "token_id"),
    [
        ("smollm2", "<|im_start|>", 1),
        ("smollm2", "<|im_end|>", 2),
        ("smollm2", "<|endoftext|>", 0),
        ("gemma3", "<start_of_turn>", 105),
        ("gemma3", "<end_of_turn>", 106),
        ("gemma3", "<bos>", 2),
        ("gemma3", "<eos>", 1),
    ],
)
def test_control_tokens_are_one_id_and_decode_drops_them(
    built: dict[str, GgufTokenizer], name: str, text: str, token_id: int
) -> None:
    tok = built[name]
    ids = _encode(tok, f"user{text}model")
    assert ids.count(token_id) == 1
    assert _encode(tok, text) == [token_id]
    assert tok.tokenizer.decode(ids, skip_special_tokens=True) == "usermodel"
    assert tok.tokenizer.decode(ids, skip_special_tokens=False) == f"user{text}model"


def test_user_defined_tokens_are_one_id_and_decode_keeps_them(built: dict[str, GgufTokenizer]) -> None:
    tok = built["gemma3"]  # Gemma marks HTML tags and runs of newlines USER_DEFINED
    assert _encode(tok, "<b>") == [200]
    assert _encode(tok, "\n\n") == [108]
    ids = _encode(tok, "<b>bold</b>\n\n")
    assert tok.tokenizer.decode(ids, skip_special_tokens=True) == "<b>bold</b>\n\n"


def test_bos_eos_and_end_of_turn(built: dict[str, GgufTokenizer]) -> None:
    smol, gemma = built["smollm2"], built["gemma3"]
    # SmolLM2's GGUF: bos 1 <|im_start|>, eos 2 <|im_end|>; <|endoftext|> also ends generation
    assert (smol.bos_token, smol.bos_token_id, smol.eos_token) == ("<|im_start|>", 1, "<|im_end|>")
    assert smol.eos_token_ids == (2, 0)
    assert smol.add_bos is False
    # Gemma 3's eos <eos> ends a document; its turns end with <end_of_turn>
    assert (gemma.bos_token, gemma.bos_token_id, gemma.eos_token) == ("<bos>", 2, "<eos>")
    assert gemma.eos_token_ids == (1, 106)
    assert gemma.add_bos is True
    assert GOLDEN["smollm2"]["transformers_adds_bos"] is False
    assert GOLDEN["gemma3"]["transformers_adds_bos"] is True


def test_eos_token_ids_take_the_eot_id_and_only_control_end_of_turn_tokens(fields: dict[str, Fields]) -> None:
    smol = fields["smollm2"]
    assert tokenizer_from_gguf({**smol, "tokenizer.ggml.eot_token_id": 5}).eos_token_ids == (2, 5, 0)
    types = list(smol["tokenizer.ggml.token_type"])
    types[0] = 1  # <|endoftext|> as a NORMAL token: text that merely looks like an end of turn
    assert tokenizer_from_gguf({**smol, "tokenizer.ggml.token_type": types}).eos_token_ids == (2,)


def test_chat_template(built: dict[str, GgufTokenizer], fields: dict[str, Fields]) -> None:
    template = built["smollm2"].chat_template
    assert template == fields["smollm2"]["tokenizer.chat_template"]
    assert template is not None and "<|im_start|>" in template
    assert built["gemma3"].chat_template is None  # this Gemma file carries none


@pytest.mark.parametrize(
    ("name", "overrides", "starts_with_bos"),
    [
        ("smollm2", {"tokenizer.ggml.add_bos_token": True}, True),
        ("smollm2", {"tokenizer.ggml.add_bos_token": None}, False),  # byte-level BPE: llama.cpp's default
        ("smollm2", {"tokenizer.ggml.add_bos_token": None, "tokenizer.ggml.pre": "llama-bpe"}, True),
        ("gemma3", {"tokenizer.ggml.add_bos_token": False}, False),
        ("gemma3", {"tokenizer.ggml.add_bos_token": None}, True),  # SentencePiece: llama.cpp's default
    ],
)
def test_add_bos_is_honoured(
    fields: dict[str, Fields], name: str, overrides: dict[str, Any], starts_with_bos: bool
) -> None:
    metadata = {k: v for k, v in {**fields[name], **overrides}.items() if v is not None}
    tok = tokenizer_from_gguf(metadata)
    ids = _encode(tok, "Hello", special=True)
    assert tok.add_bos is starts_with_bos
    assert ids == ([tok.bos_token_id] if starts_with_bos else []) + _encode(tok, "Hello")


def test_add_eos_appends_eos(fields: dict[str, Fields]) -> None:
    tok = tokenizer_from_gguf({**fields["smollm2"], "tokenizer.ggml.add_eos_token": True})
    assert _encode(tok, "Hello", special=True) == [*_encode(tok, "Hello"), 2]


@pytest.mark.parametrize("name", list(FILES))
def test_survives_tokenizer_json(built: dict[str, GgufTokenizer], name: str) -> None:
    """The exporter writes tokenizer.json and the runtime reads it back: nothing may change on the way."""
    tok = built[name]
    reloaded = Tokenizer.from_str(tok.tokenizer.to_str())
    for case in GOLDEN[name]["cases"]:
        assert reloaded.encode(case["text"]).ids == tok.tokenizer.encode(case["text"]).ids
        assert reloaded.decode(case["expected_ids"], skip_special_tokens=True) == case["decoded_skip_special"]


def test_a_262k_vocabulary_builds_in_seconds(fields: dict[str, Fields]) -> None:
    start = time.perf_counter()
    tokenizer_from_gguf(fields["gemma3"])
    assert time.perf_counter() - start < 30  # about 2 s here; minutes would mean a quadratic step crept in


# ---- what a user sees when the metadata cannot be used ----


def _error(metadata: Fields) -> str:
    with pytest.raises(ExportError) as raised:
        tokenizer_from_gguf(metadata)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_no_tokenizer_metadata(fields: dict[str, Fields]) -> None:
    bare = {k: v for k, v in fields["smollm2"].items() if not k.startswith("tokenizer.")}
    assert "no tokenizer metadata" in _error(bare)


def test_unknown_tokenizer_model(fields: dict[str, Fields]) -> None:
    message = _error({**fields["smollm2"], "tokenizer.ggml.model": "bert"})
    assert "'bert'" in message and "'gpt2'" in message and "'llama'" in message


@pytest.mark.parametrize("pre", ["falcon", "default", "deepseek-llm"])
def test_unknown_pre_tokenizer(fields: dict[str, Fields], pre: str) -> None:
    message = _error({**fields["smollm2"], "tokenizer.ggml.pre": pre})
    assert f"{pre!r}" in message and "smollm" in message and "llama-bpe" in message


def test_missing_pre_tokenizer(fields: dict[str, Fields]) -> None:
    metadata = {k: v for k, v in fields["smollm2"].items() if k != "tokenizer.ggml.pre"}
    assert "no pre-tokenizer" in _error(metadata)


NO_BOS = {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.bos_token_id": None}
NO_EOS = {"tokenizer.ggml.add_eos_token": True, "tokenizer.ggml.eos_token_id": None}


@pytest.mark.parametrize(
    ("name", "overrides", "says"),
    [
        ("smollm2", {"tokenizer.ggml.merges": None}, "no tokenizer.ggml.merges"),
        ("smollm2", {"tokenizer.ggml.merges": ["Ġt"]}, "'Ġt' that is not two tokens"),
        ("smollm2", {"tokenizer.ggml.token_type": [1, 1]}, "49152 tokens but 2 token types"),
        ("smollm2", {"tokenizer.ggml.bos_token_id": 49152}, "bos_token_id 49152 is not an id"),
        ("smollm2", {"tokenizer.ggml.tokens": []}, "not a non-empty list of strings"),
        ("smollm2", NO_BOS, "sets tokenizer.ggml.add_bos_token but has no tokenizer.ggml.bos_token_id"),
        ("gemma3", NO_EOS, "sets tokenizer.ggml.add_eos_token but has no tokenizer.ggml.eos_token_id"),
        ("gemma3", {"tokenizer.ggml.scores": None}, "needs one tokenizer.ggml.scores per token"),
        ("gemma3", {"tokenizer.ggml.scores": [0.0]}, "needs one tokenizer.ggml.scores per token"),
    ],
)
def test_malformed_metadata(fields: dict[str, Fields], name: str, overrides: dict[str, Any], says: str) -> None:
    metadata = {k: v for k, v in {**fields[name], **overrides}.items() if v is not None}
    assert says in _error(metadata)


def test_a_text_listed_twice_takes_its_last_id_as_in_llama_cpp(fields: dict[str, Fields]) -> None:
    tokens = list(fields["smollm2"]["tokenizer.ggml.tokens"])
    tokens[5] = tokens[1]  # a second <|im_start|>: a text can have one id only
    tok = tokenizer_from_gguf({**fields["smollm2"], "tokenizer.ggml.tokens": tokens})
    assert _encode(tok, "<|im_start|>user") == [5, *_encode(tok, "user")]
    assert tok.bos_token == "<|im_start|>"
