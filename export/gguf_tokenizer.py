"""TEMPORARY (lead's stand-in until the tokenizer helper's module lands): gpt2 BPE only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from export.errors import ExportError


@dataclass(frozen=True)
class GgufTokenizer:
    tokenizer: Tokenizer
    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    add_bos: bool
    chat_template: str | None


def tokenizer_from_gguf(fields: Mapping[str, Any]) -> GgufTokenizer:
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ExportError(f"tokenizer model {model!r} not supported by the stand-in")
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3])
    bos = fields.get("tokenizer.ggml.bos_token_id")
    eos = fields.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]}:0 $A:0", pair=f"{tokens[bos]}:0 $A:0 $B:1", special_tokens=[(tokens[bos], bos)]
        )
    eos_ids = [eos] if eos is not None else []
    for text in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
        if text in vocab and vocab[text] not in eos_ids:
            eos_ids.append(vocab[text])
    return GgufTokenizer(tok, tokens[bos] if bos is not None else None, tokens[eos] if eos is not None else None,
                         bos, tuple(eos_ids), add_bos, fields.get("tokenizer.chat_template"))
