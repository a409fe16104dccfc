"""How a byte-level BPE vocabulary splits text before merging, by the name in `tokenizer.ggml.pre`.

Each name is one regex or a chain of them, as llama.cpp's llama-vocab.cpp reads it: each regex cuts
every piece the previous one left, its matches and the text between them both becoming pieces, which
is what `Split(behavior="isolated")` does. Only names checked against llama.cpp and transformers on
real vocabularies are listed (tests/unit/test_gguf_tokenizer.py); any other name is refused rather
than guessed, since a wrong split silently feeds the model token sequences it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex, pre_tokenizers

from export.errors import ExportError

# GPT-2's split: contractions, letters, digits and other symbols, each with at most one leading space
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3's: case-blind contractions, a letter run may take one leading symbol, numbers go 1-3 digits
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's: Llama 3's, with every digit its own piece
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGIT = r"\p{N}"


@dataclass(frozen=True)
class _Split:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token is taken as is (llama.cpp: Llama 3 family)
    add_bos: bool = False  # llama.cpp's add-BOS default when the GGUF does not say


_SPLITS: dict[str, _Split] = {
    "gpt-2": _Split((_GPT2,)),
    "smollm": _Split((_DIGIT, _GPT2)),
    "llama-bpe": _Split((_LLAMA3,), ignore_merges=True, add_bos=True),
    "qwen2": _Split((_QWEN2,)),
}

SUPPORTED_PRE_TOKENIZERS = tuple(sorted(_SPLITS))


@dataclass(frozen=True)
class BytePreTokenizer:
    pre_tokenizer: pre_tokenizers.PreTokenizer
    ignore_merges: bool
    add_bos: bool


def byte_level_pre_tokenizer(name: object) -> BytePreTokenizer:
    """The pre-tokenizer `tokenizer.ggml.pre` names, ending in the byte-to-character mapping."""
    if name is None:
        raise ExportError(
            "the GGUF names no pre-tokenizer (tokenizer.ggml.pre) for its byte-level BPE vocabulary, so how "
            "it splits text is unknown; convert it again with a current llama.cpp convert_hf_to_gguf.py"
        )
    split = _SPLITS.get(name) if isinstance(name, str) else None
    if split is None:
        raise ExportError(
            f"GGUF pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported for byte-level BPE; "
            f"supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
        )
    steps: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in split.regexes
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return BytePreTokenizer(pre_tokenizers.Sequence(steps), split.ignore_merges, split.add_bos)
