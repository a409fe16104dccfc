"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's tokenizer metadata.

A GGUF carries no tokenizer.json: llama.cpp's converter stores the vocabulary, the token types, the
merges or scores and the special ids as metadata under `tokenizer.ggml.*`. This module turns those back
into a tokenizer that encodes text the way llama.cpp does for the same file, for the two vocabulary
kinds GGUF files of chat models use:

* `gpt2`: byte-level BPE with the file's merges, split first by the regex its `tokenizer.ggml.pre` names
  (gguf_pretokenizers.py);
* `llama`: SentencePiece BPE, where the merge order is the pieces' scores (the highest-scoring pair of
  neighbours merges first), falling back to `<0xNN>` byte tokens for what the vocabulary lacks.

Control tokens become special added tokens (matched whole in a prompt, dropped by
`decode(skip_special_tokens=True)`); user-defined tokens (`<think>`, Gemma's runs of newlines) are matched
whole too, as llama.cpp always does, but are kept by decode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from export.errors import ExportError
from export.gguf_pretokenizers import byte_level_pre_tokenizer

SPM_SPACE = "\u2581"  # SentencePiece writes a space as "▁"

# Texts that end a turn or a document in common model families; llama.cpp stops generation at these too
# (llama-vocab.cpp's end-of-generation list). The GGUF's eos names only one of them: SmolLM2's is
# <|im_end|> while <|endoftext|> ends a document, Gemma 3's is <eos> while its turns end with <end_of_turn>.
END_OF_TURN_TEXTS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|end|>",
    "<EOT>",
)

SUPPORTED_MODELS = {"gpt2": "byte-level BPE", "llama": "SentencePiece"}


class TokenType(IntEnum):
    """llama.cpp's `tokenizer.ggml.token_type` values."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class GgufTokenizer:
    """The tokenizer of a GGUF file and the facts about it the manifest needs."""

    tokenizer: Tokenizer  # its post-processor adds BOS when add_bos: encode(text) is what llama.cpp feeds
    bos_token: str | None
    eos_token: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # the GGUF's eos, its eot, then every end-of-turn control token
    add_bos: bool
    chat_template: str | None


@dataclass(frozen=True)
class _Vocab:
    tokens: Sequence[str]
    types: Sequence[int]
    ids: Mapping[str, int]  # a text listed twice maps to its last id, as llama.cpp's text-to-token lookup does

    def ids_of_type(self, *wanted: TokenType) -> list[int]:
        return [i for i, kind in enumerate(self.types) if kind in wanted]


def tokenizer_from_gguf(fields: Mapping[str, Any]) -> GgufTokenizer:
    """Build the tokenizer a GGUF's metadata describes; `fields` maps each key to its plain Python value."""
    model = fields.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in fields:
        raise ExportError(
            "the GGUF has no tokenizer metadata (no tokenizer.ggml.model / tokenizer.ggml.tokens); "
            "convert the model again with llama.cpp's convert_hf_to_gguf.py, which writes it"
        )
    if model not in SUPPORTED_MODELS:
        supported = ", ".join(f"{name!r} ({kind})" for name, kind in SUPPORTED_MODELS.items())
        raise ExportError(f"GGUF tokenizer model {model!r} is not supported; supported: {supported}")
    vocab = _read_vocab(fields)
    if model == "gpt2":
        tokenizer, default_add_bos = _byte_level_bpe(fields, vocab)
    else:
        tokenizer, default_add_bos = _sentencepiece_bpe(fields, vocab), True  # llama.cpp's default for SPM
    bos_id, eos_id = _token_id(fields, vocab, "bos"), _token_id(fields, vocab, "eos")
    _add_whole_tokens(tokenizer, vocab, special_ids={_token_id(fields, vocab, "unknown"), bos_id, eos_id})
    add_bos = _adds(fields, "bos", bos_id, default=default_add_bos)
    add_eos = _adds(fields, "eos", eos_id, default=False)
    tokenizer.post_processor = _post_processor(vocab, bos_id if add_bos else None, eos_id if add_eos else None)
    template = fields.get("tokenizer.chat_template")
    return GgufTokenizer(
        tokenizer=tokenizer,
        bos_token=None if bos_id is None else vocab.tokens[bos_id],
        eos_token=None if eos_id is None else vocab.tokens[eos_id],
        bos_token_id=bos_id,
        eos_token_ids=_end_of_generation_ids(fields, vocab, eos_id),
        add_bos=add_bos,
        chat_template=template if isinstance(template, str) else None,
    )


def _adds(fields: Mapping[str, Any], name: str, token_id: int | None, default: bool) -> bool:
    """Whether encoding adds the bos (eos) token: the GGUF's flag, else llama.cpp's default for the vocabulary."""
    key = f"tokenizer.ggml.add_{name}_token"
    if key not in fields:
        return default and token_id is not None
    if fields[key] and token_id is None:
        raise ExportError(f"the GGUF sets {key} but has no tokenizer.ggml.{name}_token_id to add")
    return bool(fields[key])


def _read_vocab(fields: Mapping[str, Any]) -> _Vocab:
    tokens = fields["tokenizer.ggml.tokens"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ExportError("the GGUF's tokenizer.ggml.tokens is not a non-empty list of strings")
    types = fields.get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ExportError(f"the GGUF lists {len(tokens)} tokens but {len(types)} token types")
    return _Vocab(tokens=tokens, types=types, ids={token: index for index, token in enumerate(tokens)})


def _token_id(fields: Mapping[str, Any], vocab: _Vocab, name: str) -> int | None:
    value = fields.get(f"tokenizer.ggml.{name}_token_id")
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < len(vocab.tokens):
        raise ExportError(f"the GGUF's tokenizer.ggml.{name}_token_id {value!r} is not an id in its vocabulary")
    return value


def _byte_level_bpe(fields: Mapping[str, Any], vocab: _Vocab) -> tuple[Tokenizer, bool]:
    merges = fields.get("tokenizer.ggml.merges")
    if not merges:
        raise ExportError("the GGUF's byte-level BPE tokenizer (model 'gpt2') has no tokenizer.ggml.merges")
    pairs = [_merge_pair(merge) for merge in merges]
    pre = byte_level_pre_tokenizer(fields.get("tokenizer.ggml.pre"))
    tokenizer = Tokenizer(models.BPE(vocab=dict(vocab.ids), merges=pairs, ignore_merges=pre.ignore_merges))
    tokenizer.pre_tokenizer = pre.pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, pre.add_bos


def _merge_pair(merge: str) -> tuple[str, str]:
    # byte-level tokens spell a space as "Ġ", so the one real space separates the two halves
    left, space, right = merge.partition(" ")
    if not space or not left or not right or " " in right:
        raise ExportError(f"the GGUF's tokenizer.ggml.merges has an entry {merge!r} that is not two tokens")
    return left, right


def _sentencepiece_bpe(fields: Mapping[str, Any], vocab: _Vocab) -> Tokenizer:
    scores = fields.get("tokenizer.ggml.scores")
    if not scores or len(scores) != len(vocab.tokens):
        raise ExportError(
            "the GGUF's SentencePiece tokenizer (model 'llama') needs one tokenizer.ggml.scores per token"
        )
    ids = vocab.ids
    byte_fallback = all(f"<0x{byte:02X}>" in ids for byte in range(256))
    unk_id = _token_id(fields, vocab, "unknown")
    model = models.BPE(
        vocab=dict(ids),
        merges=_merges_by_score(vocab, scores),
        unk_token=None if unk_id is None else vocab.tokens[unk_id],
        fuse_unk=True,
        byte_fallback=byte_fallback,
    )
    tokenizer = Tokenizer(model)
    # llama.cpp puts the dummy-prefix space before every stretch of text that follows a special token
    # (or starts the prompt); a normalizer runs once per such stretch, so Prepend does the same
    space = normalizers.Replace(" ", SPM_SPACE)
    add_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), space]) if add_prefix else space
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _merges_by_score(vocab: _Vocab, scores: Sequence[float]) -> list[tuple[str, str]]:
    """Every way to make a normal piece from two pieces of the vocabulary, best-scoring result first.

    llama.cpp's SentencePiece tokenizer repeatedly merges the neighbouring pair whose joined text is the
    highest-scoring piece; a BPE model whose merge ranks follow those scores makes the same choices.
    """
    ranked: list[tuple[float, int, int, str, str]] = []
    for index, (token, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True)):
        if kind != TokenType.NORMAL or len(token) < 2 or vocab.ids[token] != index:
            continue  # a text listed twice is merged into once, under the id it looks up to
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab.ids and right in vocab.ids:
                ranked.append((-scores[index], index, cut, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _add_whole_tokens(tokenizer: Tokenizer, vocab: _Vocab, special_ids: set[int | None]) -> None:
    """Tokens llama.cpp matches whole in the text before it tokenizes the rest."""
    # an added token takes the id its text has in the model; a text listed twice has only its last id
    owned = set(vocab.ids.values())
    control = vocab.ids_of_type(TokenType.CONTROL, TokenType.UNKNOWN)
    special = sorted({*control, *(i for i in special_ids if i is not None)} & owned)
    tokenizer.add_special_tokens([AddedToken(vocab.tokens[i], special=True, normalized=False) for i in special])
    user = sorted(set(vocab.ids_of_type(TokenType.USER_DEFINED)) & owned - set(special))
    tokenizer.add_tokens([AddedToken(vocab.tokens[i], special=False, normalized=False) for i in user])


def _post_processor(vocab: _Vocab, bos_id: int | None, eos_id: int | None) -> processors.TemplateProcessing:
    bos = [] if bos_id is None else [vocab.tokens[bos_id]]
    eos = [] if eos_id is None else [vocab.tokens[eos_id]]
    single = [*bos, "$A", *eos]
    pair = [*single, *(f"{t}:1" for t in bos), "$B:1", *(f"{t}:1" for t in eos)]
    special = [(vocab.tokens[i], i) for i in (bos_id, eos_id) if i is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _end_of_generation_ids(fields: Mapping[str, Any], vocab: _Vocab, eos_id: int | None) -> tuple[int, ...]:
    ids: list[int] = []
    eot_id = _token_id(fields, vocab, "eot")
    control = set(vocab.ids_of_type(TokenType.CONTROL))
    ends = [i for i, token in enumerate(vocab.tokens) if token in END_OF_TURN_TEXTS and i in control]
    for index in (eos_id, eot_id, *ends):
        if index is not None and index not in ids:
            ids.append(index)
    return tuple(ids)
