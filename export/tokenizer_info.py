"""Tokenizer facts for the manifest, from tokenizer.json and tokenizer_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from export.errors import ExportError
from export.spec import ModelSpec
from swarm.package import TokenizerInfo, sha256_file

TOKENIZER_FILE = "tokenizer.json"


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(src: Path, config: dict[str, Any]) -> str | None:
    jinja = src / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def read_tokenizer_info(src: Path, spec: ModelSpec) -> TokenizerInfo:
    path = src / TOKENIZER_FILE
    if not path.is_file():
        raise ExportError(
            f"{src} has no {TOKENIZER_FILE}; save one with transformers' "
            "AutoTokenizer.from_pretrained(SRC).save_pretrained(SRC) on a machine that has transformers"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises bare Exceptions on bad files
        raise ExportError(f"{path} cannot be loaded: {exc}") from exc
    config_path = src / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    eos_ids = list(spec.eos_token_ids)
    eos_from_tokenizer = tokenizer.token_to_id(eos) if eos else None
    if eos_from_tokenizer is not None and eos_from_tokenizer not in eos_ids:
        eos_ids.append(eos_from_tokenizer)
    bos_id = spec.bos_token_id if spec.bos_token_id is not None else (tokenizer.token_to_id(bos) if bos else None)
    return TokenizerInfo(
        file=TOKENIZER_FILE,
        sha256=sha256_file(path),
        bos_token=bos,
        eos_token=eos,
        bos_token_id=bos_id,
        eos_token_ids=tuple(eos_ids),
        chat_template=_chat_template(src, config),
    )
