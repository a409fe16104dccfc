"""Metadata variants of the real GGUF files: the same vocabulary under other settings.

The goldens record, for each variant, what transformers and llama.cpp give on a copy of the file's
metadata with these changes; the tests apply the same changes to the metadata they read and compare.
`extra_tokens`/`extra_merges` add a few byte-level tokens the real vocabulary lacks, so that what a
pre-tokenizer does to digits and what ignore_merges does to a word with no merges show in the ids
(SmolLM2 has only single-digit tokens, and every one of its tokens is reachable by its merges).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# byte-level spellings: "Ġ" is a space
EXTRAS: dict[str, Any] = {
    "extra_tokens": ["12", "123", "45", "Ġzqxv"],
    "extra_merges": ["1 2", "12 3", "4 5"],  # none makes "Ġzqxv": only ignore_merges can produce it
}

# name -> (the golden it derives from, the change, the references that apply)
VARIANTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "pre=gpt-2": ("smollm2", {"overrides": {"tokenizer.ggml.pre": "gpt-2"}, **EXTRAS}, ("transformers", "llama.cpp")),
    "pre=llama-bpe": (
        "smollm2",
        {"overrides": {"tokenizer.ggml.pre": "llama-bpe"}, **EXTRAS},
        ("transformers", "llama.cpp"),
    ),
    "pre=qwen2": ("smollm2", {"overrides": {"tokenizer.ggml.pre": "qwen2"}, **EXTRAS}, ("transformers", "llama.cpp")),
    "pre=smollm": ("smollm2", {"overrides": {}, **EXTRAS}, ("llama.cpp",)),  # transformers lacks 'smollm'
    # transformers builds every Gemma file with GemmaTokenizer, which has no dummy prefix: llama.cpp only
    "add_space_prefix": ("gemma3", {"overrides": {"tokenizer.ggml.add_space_prefix": True}}, ("llama.cpp",)),
}


def apply(fields: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` with `change` applied: keys overridden, then tokens (normal) and merges appended."""
    out = {**fields, **change.get("overrides", {})}
    extra = list(change.get("extra_tokens", []))
    if extra:
        out["tokenizer.ggml.tokens"] = [*out["tokenizer.ggml.tokens"], *extra]
        out["tokenizer.ggml.token_type"] = [*out["tokenizer.ggml.token_type"], *[1] * len(extra)]
    if change.get("extra_merges"):
        out["tokenizer.ggml.merges"] = [*out["tokenizer.ggml.merges"], *change["extra_merges"]]
    return out
