"""Record what transformers and llama.cpp give for the tokenizers of real GGUF files.

Needs transformers and llama-cpp-python (``pip install -e '.[bench]'``); the tests that read the JSON
files need neither. For each GGUF below it writes ``<name>.json`` beside this script: for every string
in the file's list, the ids transformers' own GGUF conversion gives
(``AutoTokenizer.from_pretrained(folder, gguf_file=name)``) with and without special tokens, its decoded
text, and the ids llama.cpp gives for the same file (``Llama(path, vocab_only=True).tokenize``, special
tokens parsed, as a chat prompt needs).

``expected_ids`` is what our tokenizer must give. Where the two references agree it is their ids. Where
they disagree, the case must be listed in DISAGREEMENTS with the reason for the side it follows, or the
script stops: a difference is looked at, never averaged away.

Variants (variants.py) rerun the same strings on a changed copy of a file's metadata, written as a
GGUF with no tensors, which both libraries load: SmolLM2's vocabulary, with a few extra tokens, under
each byte-level pre-tokenizer we support, and Gemma's with a SentencePiece dummy-prefix space.

    python tests/golden/gguf_tokenizers/make_goldens.py [--smollm2 PATH] [--gemma3 PATH]

Without paths the files are found the way the tests find them (tests/gguf_models.py). Deterministic:
a rerun with the same library versions gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import tokenizers
import transformers
from transformers import AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.gguf_models import gemma3_gguf, smollm2_gguf  # noqa: E402
from tests.golden.gguf_tokenizers.variants import VARIANTS, apply  # noqa: E402

COMMON_STRINGS: list[str] = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "I'm sure they'll say it's fine, but we've seen otherwise.",
    "  leading spaces",
    " one leading space",
    "trailing spaces   ",
    "a  b   c    d     e",
    "tabs\tbetween\t\twords",
    "\tindented with a tab",
    "line one\nline two\n\nline four\n",
    "\n\n\nthree newlines first",
    "windows\r\nline ends\r\n",
    "Café, naïve, résumé, façade, jalapeño, Ångström",
    "Straße und Grüße aus München",
    "日本語のテキストです。中文也可以。한국어도 됩니다.",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦",
    "مرحبا بالعالم",
    "שלום עולם",
    "Ελληνικά και русский текст",
    "हिन्दी में लिखा गया वाक्य",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(i ** 2)  # squares",
    '{"name": "swarm", "layers": [0, 30], "ok": true, "ratio": 0.25}',
    "$ ls -la /tmp && echo \"done\" | grep -v 'x' > out.txt 2>&1",
    "1234567890 31415926535897932384626433832795028841971",
    "Prices: $1,234.56, 3.14159, -42, 1e-10, 0x1F",
    "2024-12-02T06:21:22Z",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com wrote: <b>bold</b> &amp; <i>more</i>",
    "MiXeD CaSe AND UPPER words",
    "don't DON'T Don't",
    "",
    " ",
    "\n",
    "a",
    "\u00a0non-breaking\u00a0space and zero\u200bwidth",
    "Ünïcödé ⅱ ﬁ ① ｆｕｌｌｗｉｄｔｈ",
    "Call 4512 or 12345, zqxv now!",  # digits and a word the variants' extra tokens make visible
]

SMOLLM2_CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
    "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n"
)
SMOLLM2_STRINGS = [*COMMON_STRINGS, SMOLLM2_CHAT, "<|endoftext|>text after<|im_end|>", "<|im_start|><|im_end|>"]

GEMMA3_CHAT = (
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\nThe capital of France is Paris.<end_of_turn>\n"
    "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n"
)
GEMMA3_STRINGS = [*COMMON_STRINGS, GEMMA3_CHAT, "<bos>text<eos>", "<start_of_image> picture <end_of_image>"]

LLAMA_CPP = "llama.cpp"
TRANSFORMERS = "transformers"
REFERENCE_KEYS = {TRANSFORMERS: "transformers_ids", LLAMA_CPP: "llama_cpp_ids"}

# (golden, variant or "", text) -> (the reference followed, why)
DISAGREEMENTS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("smollm2", "", "Ünïcödé ⅱ ﬁ ① ｆｕｌｌｗｉｄｔｈ"): (
        LLAMA_CPP,
        "pre-tokenizer 'smollm' isolates every \\p{N} character before the GPT-2 split (SmolLM2's own "
        "tokenizer.json: Digits(individual_digits) then ByteLevel); transformers' GGUF conversion has no "
        "entry for 'smollm' and keeps GPT-2's split, so ' ⅱ' and ' ①' (numerals, \\p{N}) stay one piece",
    ),
    ("smollm2", "pre=llama-bpe", "Call 4512 or 12345, zqxv now!"): (
        LLAMA_CPP,
        "Llama 3's tokenizer.json sets ignore_merges: a piece that is itself a token is taken whole, and "
        "llama.cpp does so for pre-tokenizer 'llama-bpe'; transformers' GGUF conversion does not set it, "
        "so ' zqxv', a token no merge makes (an extra token of this variant), is cut into letters there",
    ),
}

def write_metadata_copy(reader: gguf.GGUFReader, out: Path, fields: dict[str, Any]) -> None:
    """`fields` (a changed copy of `reader`'s metadata, same keys) as a GGUF with no tensors."""
    writer = gguf.GGUFWriter(str(out), fields["general.architecture"])
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer adds these itself
        sub_type = field.types[1] if len(field.types) > 1 else None
        writer.add_key_value(name, fields[name], field.types[0], sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _references(path: Path, strings: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    cases = []
    for text in strings:
        raw = text.encode("utf-8")
        plain = tok(text, add_special_tokens=False)["input_ids"]
        cases.append(
            {
                "text": text,
                "transformers_ids": plain,
                "transformers_ids_with_special_tokens": tok(text, add_special_tokens=True)["input_ids"],
                "llama_cpp_ids": model.tokenize(raw, add_bos=False, special=True),
                # add_bos=True here means "add what the vocabulary says to add", as llama.cpp's tools do
                "llama_cpp_ids_with_special_tokens": model.tokenize(raw, add_bos=True, special=True),
                "decoded": tok.decode(plain),
                "decoded_skip_special": tok.decode(plain, skip_special_tokens=True),
            }
        )
    return tok, cases


UNSETTLED: list[str] = []  # disagreements nobody has looked at yet: the script fails after listing them all


def _settle(golden: str, variant: str, case: dict[str, Any], references: tuple[str, ...]) -> None:
    ids = {name: case[key] for name, key in REFERENCE_KEYS.items()}
    candidates = [ids[name] for name in references]
    key = (golden, variant, case["text"])
    if all(c == candidates[0] for c in candidates):
        if key in DISAGREEMENTS:
            raise SystemExit(f"{key} is listed in DISAGREEMENTS but the references now agree: remove it")
        case["expected_ids"] = candidates[0]
        return
    if key not in DISAGREEMENTS:
        UNSETTLED.append(f"{key}: {ids}")
        return
    followed, why = DISAGREEMENTS[key]
    case["expected_ids"] = ids[followed]
    case["follows"] = followed
    case["why"] = why


def record(name: str, path: Path, strings: list[str]) -> dict[str, Any]:
    tok, cases = _references(path, strings)
    for case in cases:
        _settle(name, "", case, (TRANSFORMERS, LLAMA_CPP))
    probe = tok("a", add_special_tokens=True)["input_ids"]
    add_bos = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return {
        "gguf": path.name,
        "generated_with": {
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "llama_cpp_python": llama_cpp.__version__,
        },
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "gguf_add_bos_token": None if add_bos is None else bool(add_bos.contents()),
        # where transformers puts BOS; our policy follows the GGUF's flag (as llama.cpp does) if they differ
        "transformers_adds_bos": bool(probe and probe[0] == tok.bos_token_id),
        "cases": cases,
        "variants": {},
    }


def record_variant(golden: dict[str, Any], name: str, reader: gguf.GGUFReader, workdir: Path) -> None:
    base, change, references = VARIANTS[name]
    path = workdir / name.replace("=", "-") / golden["gguf"]
    path.parent.mkdir()
    fields = apply({key: field.contents() for key, field in reader.fields.items()}, change)
    write_metadata_copy(reader, path, fields)
    _, cases = _references(path, COMMON_STRINGS)
    kept = []
    for case in cases:
        _settle(base, name, case, references)
        # only what the tests read: the text and decode round trips are checked on the base file
        keys = ["text", "expected_ids", *(REFERENCE_KEYS[r] for r in references), "why"]
        kept.append({k: case[k] for k in keys if k in case})
    golden["variants"][name] = {"change": change, "references": list(references), "cases": kept}


def _dumps(golden: dict[str, Any]) -> str:
    # one line per list of ids keeps the files small and their diffs readable
    text = json.dumps(golden, ensure_ascii=False, indent=1)
    return re.sub(r"\[[\d,\s]+\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", type=Path, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--gemma3", type=Path, help="gemma-3-270m-q4_k_m.gguf")
    args = parser.parse_args()
    jobs = [
        ("smollm2", args.smollm2 or smollm2_gguf(), SMOLLM2_STRINGS),
        ("gemma3", args.gemma3 or gemma3_gguf(), GEMMA3_STRINGS),
    ]
    with tempfile.TemporaryDirectory(prefix="gguf-tokenizer-goldens-") as tmp:
        for name, path, strings in jobs:
            golden = record(name, path, strings)
            reader = gguf.GGUFReader(path)
            for variant, (base, _, _) in VARIANTS.items():
                if base == name:
                    record_variant(golden, variant, reader, Path(tmp))
            out = HERE / f"{name}.json"
            out.write_text(_dumps(golden))
            if UNSETTLED:
                raise SystemExit("references disagree; look, then list each in DISAGREEMENTS:\n" + "\n".join(UNSETTLED))
            size = out.stat().st_size
            print(f"wrote {out}: {size} bytes, {len(strings)} strings, {len(golden['variants'])} variants")


if __name__ == "__main__":
    main()
